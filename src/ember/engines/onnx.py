"""ONNX Runtime engine: runs a model graph on CPU (or CUDA when asked and present)."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from pathlib import Path

import numpy as np

from ember.engines.base import TokenBatch, TokenIds, Vectors
from ember.errors import ModelLoadFailed
from ember.pooling import GraphOutputFinish, Pooling

log = logging.getLogger(__name__)

POOLED_OUTPUT = "sentence_embedding"
THREADS_PER_LANE = 4  # the default split of cores into lanes (see OnnxEngine)
# Ember's int8 graphs: one thread per lane. Their per-token quantisation and the passes around
# each int8 product are memory-bound small operators that ONNX Runtime's pool does not speed
# up: on MiniLM, 2 cores, one 2-thread call ran 1.24x one thread; two 1-thread lanes 1.55-1.75x.
INT8_THREADS_PER_LANE = 1


def available_cores() -> int:
    """Cores this process may run on (affinity and cgroup pinning included)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class OnnxEngine:
    """Runs an ONNX graph whose output is either pooled vectors or token states.

    Graphs Ember builds pool and normalise inside the graph (`sentence_embedding`); ONNX
    files users bring may return token states or unnormalised vectors, which are finished
    here as the model's settings say.

    On CPU the scheduler may run several calls at once (`lanes`), each on cores/lanes threads.
    Whole batches side by side need no barrier between cores after every operator, as ONNX
    Runtime's intra-op pool does: on MiniLM, 2 cores, two 1-thread lanes gave 1.25-1.7x the
    tokens/s of one 2-thread call while other processes took CPU, and the same on an idle
    machine, but a lone 10-token query took 3.0 ms instead of 1.8. So the default keeps
    about four threads per lane (`threads_per_lane`): one lane up to 7 cores (unmeasured
    beyond 2). Ember's int8 graphs do better on one thread per lane (INT8_THREADS_PER_LANE).
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
    ) -> None:
        import onnxruntime as ort

        cores = threads or available_cores()
        wanted = lanes or max(1, cores // threads_per_lane)
        self._lanes = 1 if gpu_layers > 0 else max(1, min(wanted, cores))
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, cores // self._lanes)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=_providers(gpu_layers)
            )
        except Exception as exc:  # ORT raises its own untyped errors for bad files
            # ORT quotes the full path; name the file only, never where the data folder is.
            reason = first_line(exc).replace(str(model_path), model_path.name)
            raise ModelLoadFailed(f"cannot load {model_path.name}: {reason}") from exc
        self._input_names = {graph_input.name for graph_input in self._session.get_inputs()}
        outputs = self._session.get_outputs()
        names = [output.name for output in outputs]
        if output_name is None:
            output_name = POOLED_OUTPUT if POOLED_OUTPUT in names else names[0]
        if output_name not in names:
            raise ModelLoadFailed(f"{model_path.name} has no output {output_name!r} ({names})")
        self._output_name = output_name
        self._finish = GraphOutputFinish(
            pooled_in_graph=output_name == POOLED_OUTPUT,
            pooling=pooling,
            normalize_output=normalize_output,
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

    def embed(self, batch: TokenBatch) -> Vectors:
        feeds, attention_mask = graph_feeds(batch, self._pad_id, self._input_names)
        (output,) = self._session.run([self._output_name], feeds)
        return self._finish(output, attention_mask)

    def close(self) -> None:
        del self._session


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
