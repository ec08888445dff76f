"""OpenVINO engine: runs the same ONNX graph as OnnxEngine, on CPU, with OpenVINO's kernels.

Opt-in per model (model.json `"runtime": "openvino"`), not the default. On all-MiniLM-L6-v2
(2-core AVX-512 CPU, OpenVINO 2026.4, ONNX Runtime 1.32), on a graph of standard operators,
called directly in paired runs: 1.12x ONNX Runtime's tokens/s on 4 passages of 128 tokens,
1.19x on 32 sentences of 16, 1.02x on one 10-token query. Ember's BERT graphs now use ONNX
Runtime's fused Attention, and through the server OpenVINO gave 0.96-1.09x on them (1.03-1.12x
for 64 concurrent clients). It holds more memory (430 MB instead of 279 after the benchmark), and
each new batch shape's first call takes 15-30 ms longer while it prepares kernels for it. Its
vectors equal ONNX Runtime's (min cosine 1.0000).

Graphs it would not compute as ONNX Runtime does are refused, and calls are cut to the graph's
row blocks (see _call_limit). Precision is pinned to f32: on CPUs with bf16 units OpenVINO
would otherwise compute in bf16.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ember.engines.base import TokenBatch, Vectors
from ember.engines.cores import available_cores
from ember.engines.onnx import POOLED_OUTPUT, first_line, graph_feeds
from ember.engines.onnx_graphs.builder import CHUNK_TOKENS_CONSTANT
from ember.errors import EngineFailure, ModelLoadFailed, RuntimeMissing
from ember.pooling import NORMALIZED_METADATA, GraphOutputFinish, Pooling

log = logging.getLogger(__name__)


# Input shapes whose prepared kernels OpenVINO keeps. Each costs ~0.75 MB on MiniLM; the
# default (5000) let a server's memory grow by ~480 MB over 600 distinct shapes of 3-256-token
# batches, where ONNX Runtime stayed at 226 MB.
SHAPES_KEPT = 256
_STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
# com.microsoft operators whose OpenVINO results were checked against ONNX Runtime's: the
# Attention of Ember's BERT graphs (padded batches, min cosine 0.9999999). Others are refused:
# on Ember's nomic-bert graph (RotaryEmbedding, MultiHeadAttention) OpenVINO's vectors had
# cosine 0.65-0.95 to ONNX Runtime's.
_CHECKED_FOREIGN_OPERATORS = frozenset({("com.microsoft", "Attention")})
# Standard operators of quantised graphs, which OpenVINO also runs with its own kernels.
_QUANTIZED_OPERATORS = frozenset(
    {
        "DynamicQuantizeLinear",
        "QuantizeLinear",
        "DequantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearMatMul",
        "QLinearConv",
    }
)


# Weights stored in fewer bits: OpenVINO runs such products with its own compressed-weight
# kernels. The catalog's all-MiniLM-L6-v2-int8 (int8 weights, dequantised by Cast and Mul in
# the graph) gave cosine 0.9972 to float32 sentence-transformers' vectors on OpenVINO, against
# >= 0.998 on ONNX Runtime.
_LOW_PRECISION_WEIGHTS = frozenset(
    {
        onnx.TensorProto.INT8,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.INT4,
        onnx.TensorProto.UINT4,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
    }
)


class NotForOpenVino(ModelLoadFailed):
    """The graph is one OpenVINO would not compute as ONNX Runtime does, or may crash on."""


class OpenVinoEngine:
    """One compiled model and one infer request; calls take turns (one lane), each on every
    core: OpenVINO parallelises inside a call, and its calls release the GIL."""

    def __init__(
        self,
        model_path: Path,
        *,
        pooling: Pooling,
        normalize_output: bool,
        output_name: str | None = None,
        pad_id: int = 0,
        threads: int | None = None,
    ) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise RuntimeMissing(
                "runtime openvino needs the openvino package, which is not installed: "
                "pip install 'ember-embeddings[openvino]'"
            ) from exc
        self._max_call_tokens = _call_limit(model_path)
        config = {
            "INFERENCE_NUM_THREADS": threads or available_cores(),
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "CPU_RUNTIME_CACHE_CAPACITY": SHAPES_KEPT,
        }
        try:
            core = ov.Core()
            graph = core.read_model(str(model_path))
            normalized_in_graph = _says_normalized(graph)
            compiled = core.compile_model(graph, "CPU", config)
            del graph  # the compiled model keeps what it needs
        except Exception as exc:  # OpenVINO raises its own untyped errors for bad graphs
            reason = _reason(exc).replace(str(model_path), model_path.name)
            raise ModelLoadFailed(f"OpenVINO cannot load {model_path.name}: {reason}") from exc
        self._compiled: Any = compiled
        self._request: Any = compiled.create_infer_request()
        self._turn = threading.Lock()
        self._input_names = {name for port in compiled.inputs for name in port.get_names()}
        self._output = _output_port(compiled.outputs, output_name, model_path.name)
        self._finish = GraphOutputFinish(
            pooled_in_graph=POOLED_OUTPUT in self._output.get_names(),
            pooling=pooling,
            normalize_output=normalize_output,
            normalized_in_graph=normalized_in_graph,
        )
        self._pad_id = pad_id
        width = self._output.get_partial_shape()[-1]
        self._dimensions = width.get_length() if width.is_static else 0
        log.info("%s runs on OpenVINO %s (CPU, f32)", model_path.name, ov.__version__)

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def lanes(self) -> int:
        return 1

    @property
    def runtime(self) -> str:
        return "openvino"

    def embed(self, batch: TokenBatch, *, alone: bool = False) -> Vectors:
        request = self._request
        if request is None:
            raise EngineFailure("the OpenVINO model is closed")
        pieces = [
            self._embed_piece(request, piece) for piece in _pieces(batch, self._max_call_tokens)
        ]
        if not pieces:
            return np.empty((0, self._dimensions), dtype=np.float32)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _embed_piece(self, request: Any, batch: TokenBatch) -> Vectors:
        feeds, attention_mask = graph_feeds(batch, self._pad_id, self._input_names)
        with self._turn:
            # share_outputs=False: the rows are copied out of the request's buffer, which
            # the next call overwrites.
            results = request.infer(feeds, share_inputs=False, share_outputs=False)
            output = results[self._output]
        return self._finish(output, attention_mask)

    def close(self) -> None:
        """Drop the compiled model (a call running keeps it until it returns); calls after
        this raise EngineFailure, and closing again does nothing."""
        self._request = None
        self._compiled = None


def _pieces(batch: TokenBatch, max_tokens: int | None) -> list[TokenBatch]:
    """Consecutive rows grouped so each group's padded size stays within `max_tokens` (a row
    longer than that alone makes a group); None: the whole batch in one."""
    if max_tokens is None:
        return [batch] if len(batch) else []
    pieces: list[TokenBatch] = []
    start, longest = 0, 0
    sequences = batch.sequences
    for stop, sequence in enumerate(sequences):
        longest_with = max(longest, len(sequence))
        if stop > start and longest_with * (stop - start + 1) > max_tokens:
            pieces.append(TokenBatch(sequences[start:stop]))
            start, longest_with = stop, len(sequence)
        longest = longest_with
    if start < len(sequences):
        pieces.append(TokenBatch(sequences[start:]))
    return pieces


def _call_limit(model_path: Path) -> int | None:
    """Padded tokens per call that the graph's row-chunking Loop runs once for (None: the graph
    has no Loop). NotForOpenVino if OpenVINO should not run the graph at all.

    - OpenVINO reads some com.microsoft operators but computes others differently. Standard
      operators only, then, and the few others checked (_CHECKED_FOREIGN_OPERATORS), on float32
      weights (_QUANTIZED_OPERATORS, _LOW_PRECISION_WEIGHTS).
    - OpenVINO 2026.4 corrupts its heap and aborts the process when the Loop of Ember's graphs
      (builder.map_row_chunks) runs more than once: on 1 call in ~100 of 1025-2048 tokens,
      never in 800 calls within 1024. So calls stay within one block, and a Loop whose block
      size is unknown (not Ember's) keeps the graph on ONNX Runtime.
    """
    from onnx import numpy_helper

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a bad file
        raise ModelLoadFailed(f"cannot read {model_path.name}: {first_line(exc)}") from exc
    operators, weight_types = _contents(model.graph)
    foreign = sorted(
        f"{domain}.{name}"
        for domain, name in operators
        if domain not in _STANDARD_DOMAINS and (domain, name) not in _CHECKED_FOREIGN_OPERATORS
    )
    if foreign:
        raise NotForOpenVino(
            f"{model_path.name} uses {', '.join(foreign)}, which OpenVINO may not compute as "
            "ONNX Runtime does"
        )
    names = {name for domain, name in operators if domain in _STANDARD_DOMAINS}
    quantized = sorted(names & _QUANTIZED_OPERATORS) + sorted(
        onnx.TensorProto.DataType.Name(kind) for kind in weight_types & _LOW_PRECISION_WEIGHTS
    )
    if quantized:
        raise NotForOpenVino(
            f"{model_path.name} is quantised ({', '.join(quantized)}), and OpenVINO rounds "
            "differently from ONNX Runtime"
        )
    if not any(node.op_type == "Loop" for node in model.graph.node):
        return None
    for tensor in model.graph.initializer:
        if tensor.name == CHUNK_TOKENS_CONSTANT:
            return int(numpy_helper.to_array(tensor))
    raise NotForOpenVino(f"{model_path.name} has a Loop OpenVINO may not run safely")


def _contents(graph: Any) -> tuple[set[tuple[str, str]], set[int]]:
    """(domain, operator) pairs and weight data types of a graph and its subgraphs; weights
    are initializers and Constant nodes' tensors, where some exporters keep them."""
    operators = {(node.domain, node.op_type) for node in graph.node}
    weight_types = {tensor.data_type for tensor in graph.initializer}
    weight_types |= {
        attribute.t.data_type
        for node in graph.node
        if node.op_type == "Constant" and node.domain in _STANDARD_DOMAINS
        for attribute in node.attribute
        if attribute.HasField("t")
    }
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                inner_operators, inner_types = _contents(subgraph)
                operators |= inner_operators
                weight_types |= inner_types
    return operators, weight_types


def _reason(exc: Exception) -> str:
    """What an OpenVINO error says, without the source locations it opens with: its first
    line was all that was kept ("Exception from src/inference/src/cpp/core.cpp:132:"), and
    the operator a graph needs and OpenVINO lacks came lines later."""
    lines = [line.strip() for line in str(exc).splitlines()]
    said = [
        line
        for line in lines
        if line and not line.startswith(("Exception from ", "Check '", "FrontEnd API failed with"))
    ]
    return " ".join(said) if said else first_line(exc)


def _output_port(outputs: list[Any], wanted: str | None, file_name: str) -> Any:
    """The output named `wanted`; by default `sentence_embedding` if present, else the first."""
    for name in (wanted,) if wanted is not None else (POOLED_OUTPUT,):
        for port in outputs:
            if name in port.get_names():
                return port
    if wanted is None:
        return outputs[0]
    names = sorted(name for port in outputs for name in port.get_names())
    raise ModelLoadFailed(f"{file_name} has no output {wanted!r} ({names})")


def _says_normalized(graph: Any) -> bool:
    """Whether the ONNX file's metadata says its rows are unit vectors already (OpenVINO
    keeps an ONNX file's metadata under the rt_info key "framework")."""
    key = ["framework", NORMALIZED_METADATA]
    return bool(graph.has_rt_info(key)) and str(graph.get_rt_info(key).astype(str)) == "true"
