"""Which runtime runs an ONNX model: ONNX Runtime by default, OpenVINO when model.json asks
for it and the graph is one OpenVINO computes as ONNX Runtime does."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from ember.engines.base import TokenBatch
from ember.engines.onnx_graphs.bert import build_bert_graph
from ember.errors import ModelLoadFailed
from ember.models.loader import load_model
from ember.models.settings import ModelSettings
from tests.engines.test_bert_graph import tiny_config, tiny_weights
from tests.support.models import write_tiny_tokenizer
from tests.support.openvino import require_openvino

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


def test_openvino_not_installed_is_a_clear_load_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # what a missing package imports as
    with pytest.raises(ModelLoadFailed, match=r"ember-embeddings\[openvino\]"):
        load_model(model_folder(tmp_path), settings(runtime="openvino"))
