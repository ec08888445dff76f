"""What every engine does with the machine it finds and the faults it meets: thread counts
that follow the cores this process may use, a GPU asked for on a CPU-only machine (one log
line, then the CPU), and a session that raises in the middle of a batch."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from ember.engines.base import TokenBatch
from ember.engines.onnx import OnnxEngine
from ember.engines.onnx_graphs.bert import build_bert_graph
from tests.engines.test_bert_graph import POSITIONS, VOCAB, tiny_config, tiny_weights
from tests.support.openvino import require_openvino


@pytest.fixture(scope="module")
def graph_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("limits") / "model.onnx"
    graph = build_bert_graph(tiny_config(), tiny_weights(), pooling="mean", normalize=True)
    onnx.save(graph, path)
    return path


def ragged_batch(seed: int, rows: int) -> TokenBatch:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, POSITIONS + 1, size=rows)
    return TokenBatch([rng.integers(4, VOCAB, size=int(n)).astype(np.int64) for n in lengths])


ON_ONE_CORE = """
import os
import sys
from pathlib import Path

import numpy as np

os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

from ember.engines.base import TokenBatch
from ember.engines.onnx import OnnxEngine
from ember.engines.openvino import OpenVinoEngine

engine = OnnxEngine(Path(sys.argv[1]), pooling="mean", normalize_output=True)
lanes_asked = OnnxEngine(Path(sys.argv[1]), pooling="mean", normalize_output=True, lanes=4)
engine.embed(TokenBatch([np.arange(1, 6, dtype=np.int64)]))
openvino = OpenVinoEngine(Path(sys.argv[1]), pooling="mean", normalize_output=True)
print(
    engine.lanes,
    lanes_asked.lanes,
    engine._session.get_session_options().intra_op_num_threads,
    engine._lane_session._open_args[1],
    openvino._compiled.get_property("INFERENCE_NUM_THREADS"),
)
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_on_one_core_every_engine_runs_one_thread_on_one_lane(graph_file: Path) -> None:
    """A process pinned to one core (taskset, a cpuset) gets one lane of one thread, even
    with more lanes asked for, and OpenVINO one inference thread."""
    require_openvino()
    finished = subprocess.run(
        [sys.executable, "-c", ON_ONE_CORE, str(graph_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.split() == ["1", "1", "1", "1", "1"]


def test_a_gpu_asked_for_without_cuda_runs_on_cpu_with_one_log_line(
    graph_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with caplog.at_level(logging.DEBUG, logger="ember.engines"):
        engine = OnnxEngine(graph_file, pooling="mean", normalize_output=True, gpu_layers=99)
        vectors = engine.embed(ragged_batch(3, 5))
        engine.embed(ragged_batch(4, 5), alone=True)
    assert vectors.shape == (5, 32)
    assert [record.getMessage() for record in caplog.records] == [
        "ngl=99 asks for a GPU, but CUDA is not available: running on CPU"
    ]
    assert engine.lanes == 1


class FailingOnce:
    """A session whose next `run` raises, as ONNX Runtime does on a kernel's failure."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.fail = True

    def run(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail:
            self.fail = False
            raise RuntimeError("injected kernel failure")
        return self._session.run(*args, **kwargs)


def test_a_session_raising_mid_batch_leaves_the_engine_serving(graph_file: Path) -> None:
    """The call that met the fault raises it as is (the scheduler answers it and reloads),
    holds nothing, and the calls after it, on every lane, give the vectors of a clean engine."""
    engine = OnnxEngine(graph_file, pooling="mean", normalize_output=True, threads=2, lanes=2)
    clean = OnnxEngine(graph_file, pooling="mean", normalize_output=True, lanes=1)
    batches = [ragged_batch(seed, 6) for seed in range(8)]
    expected = [clean.embed(batch) for batch in batches]
    engine._session = FailingOnce(engine._session)
    with pytest.raises(RuntimeError, match="injected"):
        engine.embed(batches[0], alone=True)
    engine._session.fail = True  # now on the lanes' path, while the lane session opens
    with pytest.raises(RuntimeError, match="injected"):
        engine.embed(batches[0])
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(engine.embed, batches))
    for vectors, want in zip(got, expected, strict=True):
        np.testing.assert_allclose(vectors, want, atol=1e-6)
    np.testing.assert_allclose(engine.embed(batches[1], alone=True), expected[1], atol=1e-6)
    engine.close()
    clean.close()
