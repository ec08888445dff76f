"""LangChain's OpenAIEmbeddings with its defaults: cl100k token ids, re-tokenised by Ember."""

from __future__ import annotations

import httpx
import numpy as np
import openai
from langchain_openai import OpenAIEmbeddings

from tests.clients.corpus import varied_texts
from tests.support.server import RunningServer

MODEL = "all-MiniLM-L6-v2"


def test_default_langchain_calls_get_the_vectors_of_the_plain_strings(
    server: RunningServer,
) -> None:
    texts = varied_texts(300)
    embeddings = OpenAIEmbeddings(model=MODEL, base_url=server.api_url, api_key="sk-local")
    from_langchain = np.asarray(embeddings.embed_documents(texts))
    query = np.asarray(embeddings.embed_query("What is Python?"))
    client = openai.OpenAI(base_url=server.api_url, api_key="sk-local")
    plain = np.asarray(
        [item.embedding for item in client.embeddings.create(model=MODEL, input=texts).data]
    )
    cosines = np.sum(from_langchain * plain, axis=1)
    assert cosines.min() >= 0.9999, texts[int(cosines.argmin())]
    plain_query = client.embeddings.create(model=MODEL, input="What is Python?").data[0]
    assert float(np.dot(query, plain_query.embedding)) >= 0.9999


def test_retokenisation_is_announced_in_a_header(server: RunningServer) -> None:
    import tiktoken

    ids = tiktoken.get_encoding("cl100k_base").encode("The quick brown fox jumps over the lazy dog")
    response = httpx.post(
        f"{server.api_url}/embeddings",
        json={"model": MODEL, "input": [ids]},
        headers={"Authorization": "Bearer sk-local"},
    )
    assert response.status_code == 200
    assert response.headers["x-ember-token-ids"] == "cl100k_base; retokenized"
    assert response.json()["usage"]["prompt_tokens"] == 11  # the model's own tokens
