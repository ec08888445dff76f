"""OnnxEngine lanes: one per core by default (or per `threads_per_lane`), `lanes` settable,
GPU runs one lane; a call made alone runs on every core, with the same vectors."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest

from ember.engines.base import TokenBatch
from ember.engines.cores import available_cores
from ember.engines.onnx import OnnxEngine
from ember.engines.onnx_graphs.bert import build_bert_graph
from ember.errors import EngineFailure
from tests.engines.test_bert_graph import tiny_config, tiny_weights


@pytest.fixture(scope="module")
def graph_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lanes") / "model.onnx"
    graph = build_bert_graph(tiny_config(), tiny_weights(), pooling="mean", normalize=True)
    onnx.save(graph, path)
    return path


def engine(path: Path, **options: int) -> OnnxEngine:
    return OnnxEngine(path, pooling="mean", normalize_output=True, **options)


def test_default_is_one_lane_per_core_and_settable(graph_file: Path) -> None:
    assert engine(graph_file).lanes == available_cores()
    assert engine(graph_file, threads=8).lanes == 8
    assert engine(graph_file, threads=8, threads_per_lane=4).lanes == 2
    assert engine(graph_file, lanes=1).lanes == 1
    assert engine(graph_file, lanes=64).lanes == available_cores()


def session_threads(session: object) -> int:
    return int(session.get_session_options().intra_op_num_threads)  # type: ignore[attr-defined]


def test_lanes_open_their_own_session_when_first_needed_with_the_same_vectors(
    graph_file: Path,
) -> None:
    rng = np.random.default_rng(5)
    batch = TokenBatch([rng.integers(1, 100, size=length).astype(np.int64) for length in (7, 2)])
    lanes = engine(graph_file, threads=4, lanes=2)
    assert session_threads(lanes._session) == 4  # what calls made alone run on
    alone = lanes.embed(batch, alone=True)
    assert not lanes._lane_session.is_open, "a lone call opens no second session"
    before = lanes.embed(batch)  # beside others: takes turns on the first while it opens
    opening = lanes._lane_session._opening
    assert opening is not None
    opening.join(timeout=30)
    assert lanes._lane_session.is_open
    assert session_threads(lanes._lane_session._session) == 2
    after = lanes.embed(batch)
    np.testing.assert_allclose(before, alone, atol=1e-6)
    np.testing.assert_allclose(after, alone, atol=1e-6)
    lanes.close()


def test_sessions_stop_spinning_when_a_call_returns(graph_file: Path) -> None:
    """Threads left spinning after a call hold a core the reply and other lanes need."""
    lanes = engine(graph_file, threads=2, lanes=2)
    lanes.embed(TokenBatch([np.arange(1, 6, dtype=np.int64)] * 2))
    opening = lanes._lane_session._opening
    assert opening is not None
    opening.join(timeout=30)
    for session in (lanes._session, lanes._lane_session._session):
        options = session.get_session_options()
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    lanes.close()


def test_one_lane_never_opens_a_second_session(graph_file: Path) -> None:
    one = engine(graph_file, threads=4, lanes=1)
    one.embed(TokenBatch([np.arange(1, 6, dtype=np.int64)]))
    assert one._lane_session._opening is None


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


EXIT_WITHOUT_CLOSE = """
import sys
from pathlib import Path

import numpy as np

from ember.engines.base import TokenBatch
from ember.engines.onnx import OnnxEngine

engine = OnnxEngine(Path(sys.argv[1]), pooling="mean", normalize_output=True, threads=2, lanes=2)
engine.embed(TokenBatch([np.arange(1, 6, dtype=np.int64)]))  # starts opening the lane session
"""


def test_a_process_exiting_while_the_lane_session_opens_exits_cleanly(graph_file: Path) -> None:
    """A program that never closes its engine ends as the lane session opens: it used to
    abort ("terminate called without an active exception", status 134) every time."""
    for _ in range(3):
        finished = subprocess.run(
            [sys.executable, "-c", EXIT_WITHOUT_CLOSE, str(graph_file)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert finished.returncode == 0, finished.stderr
        assert "terminate called" not in finished.stderr


def test_calls_after_close_raise_engine_failure_and_closing_twice_is_harmless(
    graph_file: Path,
) -> None:
    """A second close raised AttributeError, and so did a call after close; on lanes, such a
    call would also have started opening a second session for the closed engine."""
    for options in ({"lanes": 1}, {"threads": 2, "lanes": 2}):
        closed = engine(graph_file, **options)
        closed.close()
        closed.close()
        for alone in (True, False):
            with pytest.raises(EngineFailure, match="closed"):
                closed.embed(TokenBatch([np.arange(1, 6, dtype=np.int64)]), alone=alone)
        assert closed._lane_session._opening is None


def test_a_model_file_replaced_after_the_load_opens_no_lane_session_from_it(
    graph_file: Path, tmp_path: Path
) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(graph_file.read_bytes())
    other = tmp_path / "other.onnx"
    graph = build_bert_graph(tiny_config(), tiny_weights(seed=1), pooling="mean", normalize=True)
    onnx.save(graph, other)
    rng = np.random.default_rng(6)
    batch = TokenBatch([rng.integers(1, 100, size=length).astype(np.int64) for length in (5, 3)])
    lanes = engine(path, threads=4, lanes=2)
    alone = lanes.embed(batch, alone=True)
    other.replace(path)  # another model under the same name, as a folder replaced under an id
    lanes.embed(batch)  # beside others: the lane session would open now, from the new file
    opening = lanes._lane_session._opening
    assert opening is not None
    opening.join(timeout=30)
    assert not lanes._lane_session.is_open
    np.testing.assert_allclose(lanes.embed(batch), alone, atol=1e-6)  # still the loaded model
    different = engine(path, lanes=1).embed(batch, alone=True)
    assert not np.allclose(different, alone, atol=1e-3)
    lanes.close()
