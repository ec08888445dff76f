"""A tiny nomic-embed-text folder, registered and served for real, against the reference."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import openai
import pytest
from tokenizers import Tokenizer

from ember.models.hf_folder import register_hf_folder
from ember.models.settings import read_settings
from ember.settings import ServerSettings
from tests.reference_forward.nomic_bert import nomic_sentence_embeddings
from tests.support.nomic import NOMIC_PROMPTS, TinyNomicFolder, write_tiny_nomic_folder
from tests.support.server import RunningServer, serve_in_thread

V15 = "nomic-embed-text-v1.5-tiny"
V1 = "nomic-embed-text-v1-tiny"
TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world",
    "python is a language",
    "dog",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyNomicFolder]:
    """v1.5 with its prompts in config_sentence_transformers.json and Matryoshka sizes as
    overrides; v1 with neither, so both come from Ember's nomic defaults."""
    models_dir = tmp_path_factory.mktemp("home") / "models"
    v15 = write_tiny_nomic_folder(models_dir / V15, seed=7, matryoshka=True)
    register_hf_folder(v15.path, V15, {"matryoshka_dimensions": v15.matryoshka_dimensions})
    v1 = write_tiny_nomic_folder(models_dir / V1, seed=8, matryoshka=False, st_prompts=False)
    register_hf_folder(v1.path, V1, {"matryoshka_dimensions": v1.matryoshka_dimensions})
    return {V15: v15, V1: v1}


@pytest.fixture(scope="module")
def server(
    folders: dict[str, TinyNomicFolder], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    models_dir = folders[V15].path.parent
    settings = ServerSettings(home=tmp_path_factory.mktemp("ember-home"), models_dir=models_dir)
    with serve_in_thread(settings) as running:
        yield running


def reference(folder: TinyNomicFolder, texts: list[str]) -> npt.NDArray[np.float64]:
    """Unit vectors of the numpy forward pass, on the folder's own tokenizer's ids."""
    tokenizer = Tokenizer.from_file(str(folder.path / "tokenizer.json"))
    encoded = [tokenizer.encode(text).ids for text in texts]
    width = max(len(ids) for ids in encoded)
    ids = np.zeros((len(texts), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, sequence in enumerate(encoded):
        ids[row, : len(sequence)] = sequence
        mask[row, : len(sequence)] = 1
    return nomic_sentence_embeddings(
        folder.config, folder.weights, ids, mask, pooling="mean", normalize=True
    )


def unit(vectors: Any) -> npt.NDArray[np.float64]:
    array = np.asarray(vectors, dtype=np.float64)
    norms: npt.NDArray[np.float64] = np.linalg.norm(array, axis=-1, keepdims=True)
    return array / norms


def embed(http: httpx.Client, model: str, texts: list[str], **extra: Any) -> Any:
    response = http.post("/v1/embeddings", json={"model": model, "input": texts, **extra})
    assert response.status_code == 200, response.text
    return unit([item["embedding"] for item in response.json()["data"]])


def test_registration_writes_nomic_settings(folders: dict[str, TinyNomicFolder]) -> None:
    v15 = read_settings(folders[V15].path)
    assert v15.dimensions == 32
    assert v15.ctx_len == 8192
    assert v15.pooling == "mean"
    assert v15.prompts == NOMIC_PROMPTS
    assert v15.matryoshka_dimensions == [16, 8]
    v1 = read_settings(folders[V1].path)
    assert v1.prompts == NOMIC_PROMPTS  # not in its files: Ember's nomic defaults
    assert v1.matryoshka_dimensions == []


def test_vectors_match_reference(
    client: openai.OpenAI, folders: dict[str, TinyNomicFolder]
) -> None:
    response = client.embeddings.create(model=V15, input=TEXTS)
    served = unit([item.embedding for item in response.data])
    cosines = (served * reference(folders[V15], TEXTS)).sum(axis=1)
    assert cosines.min() >= 0.9999


@pytest.mark.parametrize("model", [V15, V1])
@pytest.mark.parametrize(
    ("input_type", "prompt"),
    [("query", "search_query"), ("document", "search_document"), ("clustering", "clustering")],
)
def test_input_type_applies_the_task_prefix(
    http: httpx.Client,
    folders: dict[str, TinyNomicFolder],
    model: str,
    input_type: str,
    prompt: str,
) -> None:
    prefixed = [NOMIC_PROMPTS[prompt] + text for text in TEXTS]
    typed = embed(http, model, TEXTS, input_type=input_type)
    explicit = embed(http, model, prefixed)
    assert np.abs(typed - explicit).max() < 1e-6
    assert (typed * reference(folders[model], prefixed)).sum(axis=1).min() >= 0.9999
    plain = embed(http, model, TEXTS)
    assert np.abs(typed - plain).max() > 1e-3


@pytest.mark.parametrize("model", [V15, V1])
def test_token_ids_get_the_prompt_of_their_input_type(
    http: httpx.Client, folders: dict[str, TinyNomicFolder], model: str
) -> None:
    tokenizer = Tokenizer.from_file(str(folders[model].path / "tokenizer.json"))
    prompt = NOMIC_PROMPTS["search_query"]
    from_text = embed(http, model, TEXTS, input_type="query")
    ids = [tokenizer.encode(text).ids for text in TEXTS]
    assert (embed(http, model, ids, input_type="query") * from_text).sum(axis=1).min() > 0.99999
    # Ids of text that already starts with the prompt, with special tokens or bare, get it once.
    carrying = [tokenizer.encode(prompt + text).ids for text in TEXTS]
    bare = [tokenizer.encode(prompt + TEXTS[0], add_special_tokens=False).ids]
    for arrays, expected in [(carrying, from_text), (bare, from_text[:1])]:
        served = embed(http, model, arrays, input_type="query")
        assert (served * expected).sum(axis=1).min() > 0.99999
    assert np.abs(embed(http, model, ids) - from_text).max() > 1e-3


def test_query_and_document_differ(http: httpx.Client) -> None:
    query = embed(http, V15, TEXTS, input_type="query")
    document = embed(http, V15, TEXTS, input_type="document")
    assert np.abs(query - document).max() > 1e-3


def test_input_type_through_the_openai_client(client: openai.OpenAI, http: httpx.Client) -> None:
    response = client.embeddings.create(
        model=V15, input=TEXTS[0], extra_body={"input_type": "query"}
    )
    explicit = embed(http, V15, [NOMIC_PROMPTS["search_query"] + TEXTS[0]])
    assert np.abs(unit(response.data[0].embedding) - explicit[0]).max() < 1e-6


@pytest.mark.parametrize("dimensions", [16, 8])
def test_matryoshka_dimensions(
    client: openai.OpenAI, folders: dict[str, TinyNomicFolder], dimensions: int
) -> None:
    response = client.embeddings.create(model=V15, input=TEXTS, dimensions=dimensions)
    served = np.asarray([item.embedding for item in response.data])
    assert served.shape == (len(TEXTS), dimensions)
    assert np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    full = reference(folders[V15], TEXTS)
    centred = full - full.mean(axis=1, keepdims=True)
    layer_normed = centred / np.sqrt(centred.var(axis=1, keepdims=True) + 1e-5)
    expected = unit(layer_normed[:, :dimensions])  # nomic's recipe: layer_norm, slice, normalise
    assert np.abs(served - expected).max() < 1e-4


def test_full_width_dimensions_is_accepted(client: openai.OpenAI) -> None:
    response = client.embeddings.create(model=V1, input="hello", dimensions=32)
    assert len(response.data[0].embedding) == 32


@pytest.mark.parametrize(("model", "dimensions"), [(V15, 64), (V15, 33), (V15, 0), (V1, 8)])
def test_dimensions_out_of_range_is_refused(
    http: httpx.Client, model: str, dimensions: int
) -> None:
    response = http.post(
        "/v1/embeddings", json={"model": model, "input": "hello", "dimensions": dimensions}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "dimensions"


def test_dimensions_refusal_through_the_openai_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=V15, input="hello", dimensions=64)
