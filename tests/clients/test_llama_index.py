"""llama-index's OpenAI embedding classes against Ember, unchanged but for the address."""

from __future__ import annotations

import numpy as np
import openai
from llama_index.embeddings.openai import OpenAIEmbedding

from tests.clients.corpus import varied_texts
from tests.support.server import RunningServer

MODEL = "all-MiniLM-L6-v2"


def test_openai_embedding_class_gets_the_servers_vectors(server: RunningServer) -> None:
    texts = varied_texts(40)
    # OpenAIEmbedding checks model names against OpenAI's list; `model_name` takes any string.
    embedder = OpenAIEmbedding(
        model_name=MODEL, api_base=server.api_url, api_key="sk-local", embed_batch_size=16
    )
    documents = np.asarray(embedder.get_text_embedding_batch(texts))
    query = np.asarray(embedder.get_query_embedding("What is Python?"))
    client = openai.OpenAI(base_url=server.api_url, api_key="sk-local")
    plain = np.asarray(
        [item.embedding for item in client.embeddings.create(model=MODEL, input=texts).data]
    )
    assert np.sum(documents * plain, axis=1).min() >= 0.9999
    expected = client.embeddings.create(model=MODEL, input="What is Python?").data[0].embedding
    assert float(np.dot(query, expected)) >= 0.9999
