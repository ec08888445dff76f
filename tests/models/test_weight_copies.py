"""The memory a model may hold counts the lanes' second ONNX Runtime session."""

from __future__ import annotations

from typing import Any

import pytest

from ember.engines.cores import available_cores
from ember.models.loader import weight_copies
from ember.models.settings import ModelSettings


def settings(**fields: Any) -> ModelSettings:
    return ModelSettings(**{"id": "m", "engine": "onnx", "ctx_len": 8, "dimensions": 4, **fields})


@pytest.mark.skipif(available_cores() < 2, reason="one core runs one lane")
def test_an_onnx_runtime_model_with_lanes_may_hold_two_copies() -> None:
    assert weight_copies(settings()) == 2  # one lane per core
    assert weight_copies(settings(lanes=2)) == 2


def test_one_lane_a_gpu_or_another_runtime_holds_one_copy() -> None:
    assert weight_copies(settings(lanes=1)) == 1
    assert weight_copies(settings(ngl=99)) == 1
    assert weight_copies(settings(runtime="openvino")) == 1
    assert weight_copies(settings(engine="gguf", model_file="m.gguf")) == 1
