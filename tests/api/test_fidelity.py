"""Vectors of the real default model against sentence-transformers' own output."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import openai
import pytest

MODEL = "all-MiniLM-L6-v2"
FIXTURES = Path(__file__).parent.parent / "fixtures"
REFERENCE = np.load(FIXTURES / "reference" / f"{MODEL}.npz")
TEXTS: list[str] = json.loads((FIXTURES / "texts.json").read_text(encoding="utf-8"))
LONG_TEXTS: list[str] = json.loads((FIXTURES / "long_texts.json").read_text(encoding="utf-8"))


def cosines(vectors: npt.ArrayLike, reference: npt.ArrayLike) -> npt.NDArray[np.float64]:
    left = np.asarray(vectors, dtype=np.float64)
    right = np.asarray(reference, dtype=np.float64)
    return np.sum(left * right, axis=1) / (
        np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1)
    )


def test_every_fixture_text_batched_together(client: openai.OpenAI) -> None:
    response = client.embeddings.create(model=MODEL, input=TEXTS)
    vectors = [item.embedding for item in response.data]
    assert cosines(vectors, REFERENCE["texts_embeddings"]).min() >= 0.9999
    expected_tokens = int(REFERENCE["texts_token_counts"].sum())
    assert response.usage.prompt_tokens == expected_tokens
    assert response.usage.total_tokens == expected_tokens


@pytest.mark.parametrize("index", range(len(TEXTS)))
def test_each_fixture_text_alone(client: openai.OpenAI, index: int) -> None:
    response = client.embeddings.create(model=MODEL, input=TEXTS[index], encoding_format="float")
    (cosine,) = cosines([response.data[0].embedding], [REFERENCE["texts_embeddings"][index]])
    assert cosine >= 0.9999
    assert response.usage.prompt_tokens == int(REFERENCE["texts_token_counts"][index])


def test_batching_with_other_texts_does_not_change_vectors(http: httpx.Client) -> None:
    short = http.post("/v1/embeddings", json={"model": MODEL, "input": "Hi"}).json()
    mixed = http.post("/v1/embeddings", json={"model": MODEL, "input": [*TEXTS[-3:], "Hi"]}).json()
    assert cosines([mixed["data"][-1]["embedding"]], [short["data"][0]["embedding"]])[0] > 0.99999


def test_truncate_extension_matches_sentence_transformers_truncation(http: httpx.Client) -> None:
    response = http.post(
        "/v1/embeddings", json={"model": MODEL, "input": LONG_TEXTS, "truncate": True}
    )
    assert response.status_code == 200
    body = response.json()
    vectors = [item["embedding"] for item in body["data"]]
    assert cosines(vectors, REFERENCE["long_embeddings"]).min() >= 0.9999
    limit = int(REFERENCE["max_seq_length"])
    assert body["usage"]["prompt_tokens"] == limit * len(LONG_TEXTS)


def test_over_long_input_is_refused_with_index_and_counts(http: httpx.Client) -> None:
    response = http.post("/v1/embeddings", json={"model": MODEL, "input": ["Hi", LONG_TEXTS[0]]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "input"
    untruncated = int(REFERENCE["long_token_counts_untruncated"][0])
    assert "input 1" in error["message"]
    assert str(untruncated) in error["message"]
    assert "256" in error["message"]


def test_token_id_inputs_give_the_same_vectors_as_text(http: httpx.Client) -> None:
    ids = [7592, 2088]  # "hello world" in the model's own vocabulary
    by_text = http.post("/v1/embeddings", json={"model": MODEL, "input": "Hello world"}).json()
    by_ids = http.post("/v1/embeddings", json={"model": MODEL, "input": ids}).json()
    with_specials = http.post(
        "/v1/embeddings", json={"model": MODEL, "input": [[101, *ids, 102], ids]}
    ).json()
    expected = by_text["data"][0]["embedding"]
    assert cosines([by_ids["data"][0]["embedding"]], [expected])[0] > 0.99999
    for item in with_specials["data"]:
        assert cosines([item["embedding"]], [expected])[0] > 0.99999
    assert by_ids["usage"]["prompt_tokens"] == 4
