"""Which runtime runs an ONNX model: ONNX Runtime by default, OpenVINO when model.json asks
for it and the graph is one OpenVINO computes as ONNX Runtime does."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest

from ember.engines.base import TokenBatch
from ember.engines.onnx_graphs.bert import build_bert_graph
from ember.errors import ModelLoadFailed, RuntimeMissing
from ember.models.loader import load_model
from ember.models.settings import ModelSettings, write_settings
from ember.settings import ServerSettings
from tests.engines.test_bert_graph import tiny_config, tiny_weights
from tests.support.models import write_fake_model, write_tiny_tokenizer
from tests.support.openvino import require_openvino
from tests.support.server import serve_in_thread

MODEL = "tiny-bert"


def model_folder(tmp_path: Path, *, fused: bool = False) -> Path:
    folder = tmp_path / MODEL
    folder.mkdir()
    write_tiny_tokenizer(folder / "tokenizer.json")
    graph = build_bert_graph(
        tiny_config(), tiny_weights(), pooling="mean", normalize=True, fused=fused
    )
    onnx.save(graph, folder / "model.onnx")
    return folder


def settings(**changes: Any) -> ModelSettings:
    return ModelSettings.model_validate(
        {"id": MODEL, "engine": "onnx", "ctx_len": 24, "dimensions": 32, **changes}
    )


def runtime_of(folder: Path, **changes: Any) -> str:
    model = load_model(folder, settings(**changes))
    vectors = model.engine.embed(TokenBatch([np.array([2, 7, 9, 3], dtype=np.int64)]))
    assert vectors.shape == (1, 32)
    return model.engine.runtime


def test_onnx_runtime_is_the_default(tmp_path: Path) -> None:
    assert runtime_of(model_folder(tmp_path)) == "onnxruntime"


def test_openvino_runs_a_float_graph_when_asked(tmp_path: Path) -> None:
    require_openvino()
    assert runtime_of(model_folder(tmp_path), runtime="openvino") == "openvino"


@pytest.mark.parametrize(
    "changes", [{"lanes": 2}, {"quantize": "int8"}, {"ngl": 99}], ids=["lanes", "int8", "gpu"]
)
def test_openvino_with_onnx_runtime_features_is_refused(
    tmp_path: Path, changes: dict[str, Any]
) -> None:
    with pytest.raises(ModelLoadFailed, match="runtime openvino runs float32 graphs on CPU"):
        load_model(model_folder(tmp_path), settings(runtime="openvino", **changes))


def test_openvino_asked_for_a_graph_it_cannot_run_fails_the_load(tmp_path: Path) -> None:
    require_openvino()
    with pytest.raises(ModelLoadFailed, match=rf"{MODEL}: .*com\.microsoft"):
        load_model(model_folder(tmp_path, fused=True), settings(runtime="openvino"))


def test_openvino_not_installed_answers_501_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As for GGUF without llama.cpp (and as the README's table says): a missing runtime extra
    # is 501, not the 503 model_load_failed of broken files, which clients retry.
    models_dir = tmp_path / "home" / "models"
    models_dir.mkdir(parents=True)
    folder = model_folder(models_dir)
    write_settings(folder, settings(runtime="openvino", tokenizer_file="tokenizer.json"))
    write_fake_model(models_dir, "fake-model")
    monkeypatch.setitem(sys.modules, "openvino", None)  # what a missing package imports as
    with pytest.raises(RuntimeMissing, match=r"ember-embeddings\[openvino\]"):
        load_model(folder, settings(runtime="openvino"))
    with (
        serve_in_thread(ServerSettings(home=tmp_path / "home")) as running,
        httpx.Client(base_url=running.base_url, timeout=30) as client,
    ):
        missing = client.post("/v1/embeddings", json={"model": MODEL, "input": "hello"})
        served = client.post("/v1/embeddings", json={"model": "fake-model", "input": "hello"})
    assert missing.status_code == 501, missing.text
    error = missing.json()["error"]
    assert error["type"] == "not_implemented_error"
    assert "pip install 'ember-embeddings[openvino]'" in error["message"]
    assert served.status_code == 200
