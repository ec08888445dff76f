"""OnnxEngine lanes: one per 4 cores by default (or per `threads_per_lane`), `lanes` settable,
GPU runs one lane."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest

from ember.engines.base import TokenBatch
from ember.engines.onnx import OnnxEngine, available_cores
from ember.engines.onnx_graphs.bert import build_bert_graph
from tests.engines.test_bert_graph import tiny_config, tiny_weights


@pytest.fixture(scope="module")
def graph_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lanes") / "model.onnx"
    graph = build_bert_graph(tiny_config(), tiny_weights(), pooling="mean", normalize=True)
    onnx.save(graph, path)
    return path


def engine(path: Path, **options: int) -> OnnxEngine:
    return OnnxEngine(path, pooling="mean", normalize_output=True, **options)


def test_default_is_one_lane_per_four_cores_and_settable(graph_file: Path) -> None:
    assert engine(graph_file).lanes == max(1, available_cores() // 4)
    assert engine(graph_file, threads=8).lanes == 2
    assert engine(graph_file, lanes=1).lanes == 1
    assert engine(graph_file, lanes=64).lanes == available_cores()
    assert engine(graph_file, threads_per_lane=1).lanes == available_cores()


def test_a_gpu_request_runs_one_lane(graph_file: Path) -> None:
    assert engine(graph_file, gpu_layers=99).lanes == 1  # CUDA absent here: CPU fallback


def test_lanes_running_at_once_give_the_vectors_of_one_call(graph_file: Path) -> None:
    rng = np.random.default_rng(3)
    batches = [
        TokenBatch([rng.integers(1, 100, size=length).astype(np.int64) for length in (5, 9, 3)])
        for _ in range(8)
    ]
    lanes = engine(graph_file, lanes=2)
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lanes.embed, batches))
    alone = engine(graph_file, lanes=1)
    for batch, vectors in zip(batches, together, strict=True):
        np.testing.assert_allclose(vectors, alone.embed(batch), atol=1e-6)
