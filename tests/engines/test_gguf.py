"""GGUF models on llama.cpp: tokenisation, vectors against the reference forward passes, the
server end to end, and a clean 501 when the optional runtime is missing."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import openai
import pytest
from click.testing import CliRunner

from ember.cli import main
from ember.engines.base import TokenBatch
from ember.engines.gguf import load_gguf
from ember.errors import ModelLoadFailed
from ember.models.tokenizer import TextTokenizer
from ember.settings import ServerSettings
from tests.reference_forward.bert import bert_sentence_embeddings
from tests.reference_forward.nomic_bert import nomic_sentence_embeddings
from tests.support.gguf_files import convert_folder, write_tiny_bert_folder
from tests.support.models import write_fake_model
from tests.support.nomic import write_tiny_nomic_folder
from tests.support.server import RunningServer, serve_in_thread

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "hello world",
    "Python is a language!",
    "dogs jumping, foxes jumped?",
    "the",
    "an unknown word: zebra",
]
# llama.cpp computes in float32 from float32 tensors; the reference runs in float64.
MIN_COSINE = 0.9999


@dataclass(frozen=True)
class TinyGguf:
    """A GGUF file and the HF-layout twin it was converted from."""

    path: Path
    architecture: str
    config: dict[str, Any]
    weights: dict[str, npt.NDArray[np.float32]]
    tokenizer: TextTokenizer

    def reference(self, ids: list[npt.NDArray[np.int64]], pooling: str = "mean") -> np.ndarray:
        input_ids, mask = TokenBatch(ids).padded()
        forward = (
            bert_sentence_embeddings if self.architecture == "bert" else nomic_sentence_embeddings
        )
        return forward(self.config, self.weights, input_ids, mask, pooling=pooling, normalize=True)


@pytest.fixture(scope="module")
def tiny_ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyGguf]:
    folder = tmp_path_factory.mktemp("gguf")
    bert = write_tiny_bert_folder(folder / "tiny-bert", seed=11)
    nomic = write_tiny_nomic_folder(folder / "tiny-nomic", seed=12, matryoshka=True)
    found = {}
    for name, source, architecture in [
        ("tiny-bert", bert, "bert"),
        ("tiny-nomic", nomic, "nomic-bert"),
    ]:
        found[name] = TinyGguf(
            convert_folder(source.path, folder / f"{name}-f32.gguf"),
            architecture,
            source.config,
            source.weights,
            TextTokenizer(source.path / "tokenizer.json", 64),
        )
    convert_folder(bert.path, folder / "tiny-bert-f16.gguf", half=True)
    return found


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    """llama.cpp, or a skip on installs without the extra; CI sets EMBER_REQUIRE_GGUF=1 so a
    missing extra fails there instead of skipping silently."""
    if os.environ.get("EMBER_REQUIRE_GGUF") == "1":
        import llama_cpp

        return llama_cpp
    return pytest.importorskip("llama_cpp", reason="the gguf extra (llama-cpp-python) is absent")


def cosines(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    left = left / np.linalg.norm(left, axis=1, keepdims=True)
    right = right / np.linalg.norm(right, axis=1, keepdims=True)
    return np.asarray((left * right).sum(axis=1))


# --- the engine directly ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-nomic"])
def test_llama_cpp_tokenises_like_hugging_face(
    llama_cpp: Any, tiny_ggufs: dict[str, TinyGguf], name: str
) -> None:
    model = tiny_ggufs[name]
    tokenizer, engine = load_gguf(model.path, max_tokens=64, pooling="mean", normalize_output=True)
    try:
        got = [ids.tolist() for ids in tokenizer.encode(TEXTS)]
        assert got == [ids.tolist() for ids in model.tokenizer.encode(TEXTS)]
        assert tokenizer.wrap([5, 6]).tolist() == model.tokenizer.wrap([5, 6]).tolist()
        assert tokenizer.decode(got[1]) == "hello world"
    finally:
        engine.close()


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-nomic"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_vectors_match_the_reference_forward_pass(
    llama_cpp: Any, tiny_ggufs: dict[str, TinyGguf], name: str, pooling: str
) -> None:
    model = tiny_ggufs[name]
    tokenizer, engine = load_gguf(
        model.path,
        max_tokens=64,
        pooling=pooling,
        normalize_output=True,  # type: ignore[arg-type]
    )
    try:
        # 24 sequences: more tokens than one llama.cpp batch of 64, so several decode calls.
        ids = tokenizer.encode(TEXTS * 4)
        vectors = engine.embed(TokenBatch(ids))
    finally:
        engine.close()
    assert vectors.shape == (24, 32)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosines(vectors, model.reference(ids, pooling)).min() >= MIN_COSINE


def test_f16_weights_stay_close(llama_cpp: Any, tiny_ggufs: dict[str, TinyGguf]) -> None:
    model = tiny_ggufs["tiny-bert"]
    tokenizer, engine = load_gguf(
        model.path.with_name("tiny-bert-f16.gguf"), max_tokens=64, pooling="mean",
        normalize_output=False,
    )  # fmt: skip
    try:
        ids = tokenizer.encode(TEXTS)
        vectors = engine.embed(TokenBatch(ids))
    finally:
        engine.close()
    assert not np.allclose(np.linalg.norm(vectors, axis=1), 1.0)  # normalize_output=False
    assert cosines(vectors, model.reference(ids)).min() >= 0.999


def test_gpu_layers_without_a_gpu_build_run_on_cpu(
    llama_cpp: Any, tiny_ggufs: dict[str, TinyGguf], caplog: pytest.LogCaptureFixture
) -> None:
    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama.cpp build has a GPU backend")
    with caplog.at_level(logging.WARNING, logger="ember.engines.gguf"):
        tokenizer, engine = load_gguf(
            tiny_ggufs["tiny-nomic"].path, max_tokens=64, pooling="mean", normalize_output=True,
            gpu_layers=99,
        )  # fmt: skip
    try:
        assert engine.embed(TokenBatch(tokenizer.encode(["hello"]))).shape == (1, 32)
    finally:
        engine.close()
    assert "ngl=99 asks for a GPU" in caplog.text


def test_ctx_len_past_learned_positions_is_refused(
    llama_cpp: Any, tiny_ggufs: dict[str, TinyGguf]
) -> None:
    with pytest.raises(ModelLoadFailed, match="exceeds the 64 positions"):
        load_gguf(
            tiny_ggufs["tiny-bert"].path, max_tokens=65, pooling="mean", normalize_output=True
        )


def test_a_file_llama_cpp_cannot_read_fails_to_load(llama_cpp: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadFailed, match=r"llama\.cpp cannot load broken\.gguf") as failed:
        load_gguf(broken, max_tokens=16, pooling="mean", normalize_output=True)
    # The message reaches API clients: the file's name, never where the models folder is (as
    # ONNX Runtime's load errors are trimmed); llama.cpp's own message quoted the full path.
    assert str(tmp_path) not in failed.value.message


# --- served end to end -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tiny_ggufs: dict[str, TinyGguf], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Ember home where both GGUF files were registered with `ember models add`."""
    home = tmp_path_factory.mktemp("ember-home")
    for name, model in tiny_ggufs.items():
        result = CliRunner().invoke(
            main, ["models", "add", str(model.path), "--id", name, "--home", str(home)]
        )
        assert result.exit_code == 0, result.output
    write_fake_model(home / "models", "fake-model")
    return home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[RunningServer]:
    with serve_in_thread(ServerSettings(home=home)) as running:
        yield running


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-nomic"])
def test_served_vectors_match_the_reference(
    llama_cpp: Any, tiny_ggufs: dict[str, TinyGguf], server: RunningServer, name: str
) -> None:
    model = tiny_ggufs[name]
    encoded = model.tokenizer.encode(TEXTS)
    with openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0) as client:
        response = client.embeddings.create(model=name, input=TEXTS)
        by_ids = client.embeddings.create(model=name, input=[ids.tolist() for ids in encoded])
    vectors = np.array([item.embedding for item in response.data])
    assert response.usage.prompt_tokens == sum(len(ids) for ids in encoded)
    assert cosines(vectors, model.reference(encoded)).min() >= MIN_COSINE
    # Token ids in, same vectors out: llama.cpp's (here also HF's) vocabulary ids, sent with
    # [CLS] … [SEP] so they are unmistakably the model's own rather than cl100k's.
    np.testing.assert_allclose(
        np.array([item.embedding for item in by_ids.data]), vectors, atol=1e-6
    )


def test_served_gguf_refuses_overlong_input(llama_cpp: Any, server: RunningServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        response = client.post(
            "/v1/embeddings", json={"model": "tiny-bert", "input": "hello " * 100}
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_without_llama_cpp_gguf_answers_501_and_others_still_serve(
    tiny_ggufs: dict[str, TinyGguf], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    result = CliRunner().invoke(
        main, ["models", "add", str(tiny_ggufs["tiny-bert"].path), "--home", str(home)]
    )
    assert result.exit_code == 0, result.output
    write_fake_model(home / "models", "fake-model")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` now fails
    with (
        serve_in_thread(ServerSettings(home=home)) as running,
        httpx.Client(base_url=running.base_url, timeout=30) as client,
    ):
        missing = client.post("/v1/embeddings", json={"model": "tiny-bert-f32", "input": "hi"})
        served = client.post("/v1/embeddings", json={"model": "fake-model", "input": "hello"})
        again = client.post("/v1/embeddings", json={"model": "tiny-bert-f32", "input": "hi"})
    assert missing.status_code == 501
    error = missing.json()["error"]
    assert error["type"] == "not_implemented_error"
    assert "pip install 'ember-embeddings[gguf]'" in error["message"]
    assert served.status_code == 200
    assert again.status_code == 501
