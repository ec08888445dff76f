"""Vectors of the real default model against sentence-transformers' own output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from ember.settings import ServerSettings
from tests.support.openvino import require_openvino
from tests.support.server import serve_in_thread
from tests.support.vectors import cosines

MODEL = "all-MiniLM-L6-v2"
FIXTURES = Path(__file__).parent.parent / "fixtures"
REFERENCE = np.load(FIXTURES / "reference" / f"{MODEL}.npz")
TEXTS: list[str] = json.loads((FIXTURES / "texts.json").read_text(encoding="utf-8"))
LONG_TEXTS: list[str] = json.loads((FIXTURES / "long_texts.json").read_text(encoding="utf-8"))


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


def test_model_token_ids_give_the_same_vectors_as_text(http: httpx.Client) -> None:
    sentence = "The quick brown fox jumps over the lazy dog"
    ids = [1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899]  # the model's own ids
    expected = http.post("/v1/embeddings", json={"model": MODEL, "input": sentence}).json()
    wrapped = http.post("/v1/embeddings", json={"model": MODEL, "input": [[101, *ids, 102]]})
    bare = http.post("/v1/embeddings", json={"model": MODEL, "input": ids})
    for response in (wrapped, bare):
        assert response.status_code == 200
        assert "x-ember-token-ids" not in response.headers
        vector = response.json()["data"][0]["embedding"]
        assert cosines([vector], [expected["data"][0]["embedding"]])[0] > 0.99999
        assert response.json()["usage"]["prompt_tokens"] == 11


@pytest.mark.parametrize(
    ("text", "cl100k_ids"),
    [
        ("hello hello hello hello", [15339, 24748, 24748, 24748]),
        ("apple search quick brown document", [23182, 2778, 4062, 14198, 2246]),
    ],
)
def test_bare_ids_that_read_in_both_vocabularies_are_cl100k(
    http: httpx.Client, text: str, cl100k_ids: list[int]
) -> None:
    """As LangChain's OpenAIEmbeddings sends them. Every id is inside the model's vocabulary
    too, and read as the model's they decode to words its tokenizer reproduces ("denise
    haste haste haste"): they were served as the model's ids, giving wrong vectors."""
    by_ids = http.post("/v1/embeddings", json={"model": MODEL, "input": [cl100k_ids]})
    by_text = http.post("/v1/embeddings", json={"model": MODEL, "input": text}).json()
    assert by_ids.headers["x-ember-token-ids"] == "cl100k_base; retokenized"
    vector = by_ids.json()["data"][0]["embedding"]
    assert cosines([vector], [by_text["data"][0]["embedding"]])[0] > 0.99999


def test_model_ids_that_read_in_both_vocabularies_are_the_models_when_wrapped(
    http: httpx.Client,
) -> None:
    sentence = "What is the capital of France?"
    # The model's ids; bare, they read as cl100k too ("boxoin.lengthreactNode provml"),
    # and bare arrays are read as OpenAI clients send them: as cl100k.
    ids = [2054, 2003, 1996, 3007, 1997, 2605, 1029]
    expected = http.post("/v1/embeddings", json={"model": MODEL, "input": sentence}).json()
    response = http.post("/v1/embeddings", json={"model": MODEL, "input": [[101, *ids, 102]]})
    assert response.status_code == 200
    assert "x-ember-token-ids" not in response.headers
    vector = response.json()["data"][0]["embedding"]
    assert cosines([vector], [expected["data"][0]["embedding"]])[0] > 0.99999


def test_ids_beyond_the_model_vocabulary_are_read_as_cl100k(http: httpx.Client) -> None:
    cl100k_ids = [791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679]  # the same sentence
    by_ids = http.post("/v1/embeddings", json={"model": MODEL, "input": [cl100k_ids]})
    by_text = http.post(
        "/v1/embeddings",
        json={"model": MODEL, "input": "The quick brown fox jumps over the lazy dog"},
    ).json()
    assert by_ids.headers["x-ember-token-ids"] == "cl100k_base; retokenized"
    vector = by_ids.json()["data"][0]["embedding"]
    assert cosines([vector], [by_text["data"][0]["embedding"]])[0] > 0.99999


def test_token_ids_setting_model_reads_short_ambiguous_ids_as_the_models(
    default_models_dir: Path, tmp_path: Path
) -> None:
    ids = [7592, 2088]  # "hello world" for the model; also a valid cl100k sequence
    settings = ServerSettings(home=tmp_path, models_dir=default_models_dir, token_ids="model")
    with serve_in_thread(settings) as running, httpx.Client(base_url=running.base_url) as client:
        by_ids = client.post("/v1/embeddings", json={"model": MODEL, "input": ids}).json()
        by_text = client.post("/v1/embeddings", json={"model": MODEL, "input": "hello world"})
    expected = by_text.json()["data"][0]["embedding"]
    assert cosines([by_ids["data"][0]["embedding"]], [expected])[0] > 0.99999


def test_the_default_model_runs_on_onnx_runtime(http: httpx.Client) -> None:
    http.post("/v1/embeddings", json={"model": MODEL, "input": "Hi"})
    assert http.get(f"/v1/models/{MODEL}").json()["runtime"] == "onnxruntime"


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_each_runtime_matches_sentence_transformers(
    default_models_dir: Path, tmp_path: Path, runtime: str
) -> None:
    """The same folder served with `runtime` set in its model.json."""
    if runtime == "openvino":
        require_openvino()
    folder = tmp_path / "models" / MODEL
    folder.mkdir(parents=True)
    for item in (default_models_dir / MODEL).iterdir():
        if item.name.endswith(".data"):  # OpenVINO maps no external data from outside the folder
            shutil.copyfile(item, folder / item.name)
        elif item.name != "model.json":
            (folder / item.name).symlink_to(item)
    settings = json.loads((default_models_dir / MODEL / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**settings, "runtime": runtime}))
    served = ServerSettings(home=tmp_path, models_dir=tmp_path / "models")
    with serve_in_thread(served) as running, httpx.Client(base_url=running.base_url) as client:
        batched = client.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS}).json()
        alone = client.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS[3]}).json()
        card = client.get(f"/v1/models/{MODEL}").json()
    vectors = [item["embedding"] for item in batched["data"]]
    assert cosines(vectors, REFERENCE["texts_embeddings"]).min() >= 0.9999
    (cosine,) = cosines([alone["data"][0]["embedding"]], [REFERENCE["texts_embeddings"][3]])
    assert cosine >= 0.9999
    assert card["runtime"] == runtime
