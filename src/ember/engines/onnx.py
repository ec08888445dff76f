"""ONNX Runtime engine: runs a model graph on CPU (or CUDA when asked and present)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ember.engines.base import TokenBatch, TokenIds, Vectors
from ember.engines.cores import available_cores
from ember.engines.heap import return_freed_memory
from ember.errors import EngineFailure, ModelLoadFailed
from ember.file_identity import FileIdentity, file_identity
from ember.pooling import NORMALIZED_METADATA, GraphOutputFinish, Pooling

log = logging.getLogger(__name__)

POOLED_OUTPUT = "sentence_embedding"
# The default split of cores into lanes (see OnnxEngine): one thread per lane, as whole
# batches side by side need no barrier between cores after every operator.
THREADS_PER_LANE = 1


class OnnxEngine:
    """Runs an ONNX graph whose output is either pooled vectors or token states.

    Graphs Ember builds pool and normalise inside the graph (`sentence_embedding`); ONNX
    files users bring may return token states or unnormalised vectors, which are finished
    here as the model's settings say.

    A call the scheduler makes `alone` (nothing else running) runs on every core: a lone
    10-token MiniLM query took 2.6 ms against 4.2 ms on one of 2 cores. With several lanes,
    when work piles up the scheduler runs several calls at once, each on cores/lanes threads,
    on a second session that the first such call opens in the background (until it is open,
    they take turns on the first): whole batches side by side need no barrier between cores
    after every operator, as ONNX Runtime's intra-op pool does. The default is one lane per
    core. On MiniLM, 2 cores, through the server: 1.23-1.34x the batch tokens/s of one
    2-thread call in two full benchmark runs on a busy host, one per setting; 1.04-1.16x in
    paired A/B runs; the same on an idle host in earlier sessions. Int8 graphs, whose small
    memory-bound operators gain little from a second thread: 1.55-1.75x fp32's. The second
    session is a second copy of the weights (MiniLM +91 MB; its token table is mapped, and
    shared); `lanes: 1` never opens it. `quiet` is for callers that run inputs expected to
    fail (see session_options).
    """

    def __init__(
        self,
        model_path: Path,
        *,
        pooling: Pooling,
        normalize_output: bool,
        output_name: str | None = None,
        pad_id: int = 0,
        gpu_layers: int = 0,
        threads: int | None = None,
        lanes: int | None = None,
        threads_per_lane: int = THREADS_PER_LANE,
        quiet: bool = False,
    ) -> None:
        cores = threads or available_cores()
        self._lanes = lane_count(cores, lanes, threads_per_lane, gpu_layers)
        loaded_file = file_identity(model_path)  # before the load: a change after it shows
        self._session = _open_session(model_path, cores, gpu_layers, quiet=quiet)
        self._lane_session = _LaneSession(
            model_path, max(1, cores // self._lanes), gpu_layers, quiet=quiet, file=loaded_file
        )
        self._input_names = {graph_input.name for graph_input in self._session.get_inputs()}
        outputs = self._session.get_outputs()
        names = [output.name for output in outputs]
        if output_name is None:
            output_name = POOLED_OUTPUT if POOLED_OUTPUT in names else names[0]
        if output_name not in names:
            raise ModelLoadFailed(f"{model_path.name} has no output {output_name!r} ({names})")
        self._output_name = output_name
        metadata = self._session.get_modelmeta().custom_metadata_map
        self._finish = GraphOutputFinish(
            pooled_in_graph=output_name == POOLED_OUTPUT,
            pooling=pooling,
            normalize_output=normalize_output,
            normalized_in_graph=metadata.get(NORMALIZED_METADATA) == "true",
        )
        self._pad_id = pad_id
        shape = next(output.shape for output in outputs if output.name == output_name)
        width = shape[-1]
        self._dimensions = width if isinstance(width, int) else 0

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def runtime(self) -> str:
        return "onnxruntime"

    def embed(self, batch: TokenBatch, *, alone: bool = False) -> Vectors:
        session = self._session
        if session is None:
            raise EngineFailure("the ONNX Runtime session is closed")
        feeds, attention_mask = graph_feeds(batch, self._pad_id, self._input_names)
        if alone or self._lanes == 1:
            (output,) = session.run([self._output_name], feeds)
        else:
            output = self._lane_session.run(self._output_name, feeds, fallback=session)
        return self._finish(output, attention_mask)

    def close(self) -> None:
        """Drop the sessions (a call running keeps its own until it returns); calls after
        this raise EngineFailure, and closing again does nothing."""
        self._lane_session.close()
        self._session = None


def lane_count(
    cores: int, lanes: int | None, threads_per_lane: int = THREADS_PER_LANE, gpu_layers: int = 0
) -> int:
    """How many calls an ONNX Runtime model runs at once: `lanes`, else one per
    `threads_per_lane` cores; one on a GPU."""
    if gpu_layers > 0:
        return 1
    return max(1, min(lanes or cores // threads_per_lane, cores))


class _LaneSession:
    """The session that lanes running side by side share, opened in the background when the
    first of them comes; until it is open (or if it cannot be), calls take turns on the
    all-cores session instead: running beside each other there would oversubscribe it."""

    def __init__(
        self,
        model_path: Path,
        threads: int,
        gpu_layers: int,
        *,
        quiet: bool,
        file: FileIdentity | None,
    ) -> None:
        self._open_args = (model_path, threads, gpu_layers)
        self._file = file
        self._quiet = quiet
        self._session: Any = None
        self._opening: threading.Thread | None = None
        self._turns = threading.Lock()
        self._closed = False

    @property
    def is_open(self) -> bool:
        return self._session is not None

    def run(self, output_name: str, feeds: Mapping[str, TokenIds], *, fallback: Any) -> Vectors:
        if self._session is None:
            self._start_opening()
            with self._turns:
                if self._session is None:
                    (output,) = fallback.run([output_name], feeds)
                    return np.asarray(output)
        (output,) = self._session.run([output_name], feeds)
        return np.asarray(output)

    def _start_opening(self) -> None:
        with self._turns:
            if self._opening is None and not self._closed:
                # Not a daemon: the interpreter waits for it at exit. A daemon thread still
                # inside ONNX Runtime when the process ended (an engine never closed) aborted
                # it with "terminate called without an active exception".
                self._opening = threading.Thread(target=self._open, name="open-lane-session")
                self._opening.start()

    def _open(self) -> None:
        model_path = self._open_args[0]
        if self._file is None or file_identity(model_path) != self._file:
            # Opened later from the file, the session could run another model (a folder
            # replaced under the same id) beside the loaded one, or fail half-way.
            log.warning("%s changed since it was loaded: lanes take turns", model_path.name)
            return
        try:
            self._session = _open_session(*self._open_args, quiet=self._quiet)
        except Exception as exc:  # lanes keep taking turns on the all-cores session
            log.warning("cannot open a second session for lanes (%s): taking turns", exc)

    def close(self) -> None:
        with self._turns:
            self._closed = True  # a call racing this one opens no session
        if self._opening is not None:
            self._opening.join()
        self._session = None


def session_options(threads: int, *, quiet: bool = False) -> Any:
    """ONNX Runtime options as Ember runs its graphs: `threads` intra-op threads, one call's
    operators one after another, every graph optimisation. ONNX Runtime prints errors itself
    (severity 3) besides raising them; `quiet` (4, fatal only) is for runs expected to fail,
    as probing a graph's limits, whose errors the caller handles.

    The intra-op threads spin between operators but stop when the call returns
    (`session.force_spinning_stop`). By default they went on spinning for milliseconds after
    it, holding a core that the server's reply, the client and the lanes needed: on 2 cores,
    a lone query's reply took 0.42 ms to send instead of 0.12, and beside another busy process
    a query's p50 was 8.3 ms against 5.8.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 4 if quiet else 3
    return options


def _open_session(model_path: Path, threads: int, gpu_layers: int, *, quiet: bool) -> Any:
    """An ONNX Runtime session on `threads` intra-op threads; ModelLoadFailed for bad files."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(
            str(model_path),
            sess_options=session_options(threads, quiet=quiet),
            providers=_providers(gpu_layers),
        )
    except Exception as exc:  # ORT raises its own untyped errors for bad files
        # ORT quotes the full path; name the file only, never where the data folder is.
        reason = first_line(exc).replace(str(model_path), model_path.name)
        raise ModelLoadFailed(f"cannot load {model_path.name}: {reason}") from exc
    return_freed_memory()  # the file parsed at load stays in this thread's arena
    return session


def graph_feeds(
    batch: TokenBatch, pad_id: int, input_names: Collection[str]
) -> tuple[dict[str, TokenIds], TokenIds]:
    """A graph's inputs for `batch` (ids, mask and zero token types, as far as it takes them),
    and the attention mask for pooling outside the graph."""
    input_ids, attention_mask = batch.padded(pad_id)
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "token_type_ids" in input_names:
        feeds["token_type_ids"] = np.zeros_like(input_ids)
    return {name: value for name, value in feeds.items() if name in input_names}, attention_mask


def _providers(gpu_layers: int) -> list[str]:
    import onnxruntime as ort

    if gpu_layers > 0:
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        log.warning("ngl=%d asks for a GPU, but CUDA is not available: running on CPU", gpu_layers)
    return ["CPUExecutionProvider"]


def first_line(exc: Exception) -> str:
    """An error's first line: runtimes' load errors run on for pages."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
