"""Broken model files: a clear 503 naming the model, shown in /v1/models; the rest keeps serving.

The broken models are copies of the real all-MiniLM-L6-v2 with one file damaged, so the
failures are the ones ONNX Runtime and the tokenizers library really raise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ember.settings import ServerSettings
from tests.reliability.expect import assert_error
from tests.support.models import copy_real_model, write_fake_model
from tests.support.server import RunningServer, serve_in_thread

REAL = "all-MiniLM-L6-v2"


def truncate_weights(folder: Path, keep: Callable[[int], int]) -> None:
    original = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").unlink()
    (folder / "model.onnx").write_bytes(original[: keep(len(original))])


def remove_weights(folder: Path) -> None:
    (folder / "model.onnx").unlink()


def garble_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").write_bytes(os.urandom(4096))


def half_tokenizer(folder: Path) -> None:
    text = (folder / "tokenizer.json").read_text(encoding="utf-8")
    (folder / "tokenizer.json").write_text(text[: len(text) // 2], encoding="utf-8")


DAMAGE: dict[str, Callable[[Path], None]] = {
    "onnx-cut-in-half": lambda folder: truncate_weights(folder, lambda size: size // 2),
    "onnx-missing-its-end": lambda folder: truncate_weights(folder, lambda size: size - 100),
    "onnx-missing": remove_weights,
    "tokenizer-garbage": garble_tokenizer,
    "tokenizer-cut-in-half": half_tokenizer,
}


@pytest.fixture(scope="module")
def models_dir(default_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    real = default_models_dir / REAL
    copy_real_model(real, folder / REAL, REAL)
    for model_id, damage in DAMAGE.items():
        damage(copy_real_model(real, folder / model_id, model_id))
    write_fake_model(folder, "fake")
    return folder


@pytest.fixture(scope="module")
def server(models_dir: Path) -> Iterator[RunningServer]:
    with serve_in_thread(ServerSettings(home=models_dir.parent, models_dir=models_dir)) as running:
        yield running


def embed(http: httpx.Client, model: str) -> httpx.Response:
    return http.post("/v1/embeddings", json={"model": model, "input": "The quick brown fox"})


def assert_healthy_models_serve(http: httpx.Client) -> None:
    real = embed(http, REAL)
    assert real.status_code == 200, real.text
    assert len(real.json()["data"][0]["embedding"]) == 384
    assert embed(http, "fake").status_code == 200
    assert http.get("/health").status_code == 200


@pytest.mark.parametrize("model", list(DAMAGE))
def test_damaged_model_gets_a_clear_503_and_the_others_keep_serving(
    http: httpx.Client, model: str
) -> None:
    for _ in range(2):  # a second try fails the same way: nothing half-loaded is kept
        error = assert_error(embed(http, model), 503, "model_load_failed")
        assert error["type"] == "server_error"
        assert_healthy_models_serve(http)
    card = http.get(f"/v1/models/{model}").json()
    assert card["status"] == "error"
    assert card["loaded"] is False
    listed = {card["id"]: card for card in http.get("/v1/models").json()["data"]}
    assert listed[model]["status"] == "error"
    assert listed[model]["error"]
    assert listed[REAL]["status"] == "loaded"
    assert listed["fake"]["status"] == "loaded"


@pytest.mark.parametrize("model", DAMAGE)
def test_load_error_names_the_model_and_what_is_wrong(http: httpx.Client, model: str) -> None:
    error = assert_error(embed(http, model), 503, "model_load_failed")
    assert model in error["message"]
    part = "tokenizer" if model.startswith("tokenizer") else "model.onnx"
    assert part in error["message"]


def test_a_repaired_model_serves_without_a_restart(
    http: httpx.Client, models_dir: Path, default_models_dir: Path
) -> None:
    broken = copy_real_model(default_models_dir / REAL, models_dir / "repaired", "repaired")
    remove_weights(broken)
    assert_error(embed(http, "repaired"), 503, "model_load_failed")
    os.symlink(default_models_dir / REAL / "model.onnx", broken / "model.onnx")
    response = embed(http, "repaired")
    assert response.status_code == 200, response.text
    assert (
        response.json()["data"][0]["embedding"] == embed(http, REAL).json()["data"][0]["embedding"]
    )
    assert http.get("/v1/models/repaired").json()["status"] == "loaded"
