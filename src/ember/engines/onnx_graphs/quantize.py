"""The opt-in int8 variant of an encoder graph Ember built: per-token int8 products, fp32 where
int8 costs too much fidelity, checked against the fp32 graph on calibration text.

Why this recipe (all-MiniLM-L6-v2 on a 2-core AVX-512 VNNI CPU, ONNX Runtime 1.32; min cosine
to fp32 over fixture, held-out and generated texts; benchmarks/quantize_bench.py):

- ONNX Runtime's dynamic int8 (`quantize_dynamic`) gives each product's input one scale for the
  whole batch. BERT's [CLS] token carries activations ~10x larger than other tokens in a few
  channels, so that scale is coarse for every other token: min cosine 0.80 with per-tensor
  weights, 0.97 per-channel, and a text's vector depends on its batch-mates. Leaving layers
  fp32 does not rescue it: each product alone already costs ~0.001.
- Block-wise MatMulNBits (8 bits, block 32, accuracy_level 4, like llama.cpp's q8_0) keeps
  0.9985 but runs at fp32 speed: its 8-bit kernel does ~200 GOP/s, the u8s8 VNNI GEMM ~700.
- So each token gets its own scale, with a zero point per input fitted on calibration text
  (GELU outputs are one-sided), and the few input channels whose calibration range is several
  times the median channel's (the [CLS] outliers) stay fp32 in a thin side product. The int8
  product is MatMulIntegerToFloat (the u8s8 GEMM) with per-column weight scales; the side
  product's Gemm also adds the int8 result and the product's bias, so row scales and bias
  cost one pass over the output (one fewer: 1.01-1.04x tokens/s on 1-thread lanes). That alone,
  all products int8: min cosine 0.9985 at 1.7x the fp32 graph's tokens/s. Weight rounding is
  about half of that error, activation rounding the other half.
- SmoothQuant on LayerNorm outputs (the Q/K/V and FFN-in inputs): channel ranges evened out
  by s = sqrt(max|x| / max|w|), x / s folded into the Mul that already zeroes the outlier
  channels, so it costs nothing at run time. It cuts those products' error by 10-30%; on the
  GELU outputs and the attention context it measured worse or no better, so they are left.
- GPTQ rounding of every weight, with the calibration Hessian (each text weighing the same)
  heavily damped: ~500 calibration tokens overfit a light damping. Weight error on held-out
  text drops 10-25%. Both together: all int8 at min cosine 0.99896 (held-out and generated
  text; 0.9989 on the calibration text) at 1.7x (CPU) to 1.9x (wall). Bias correction, more
  outlier channels or AWQ-style scaling for the GELU outputs bought nothing.
- The inputs whose products hurt the vectors most per weight then stay fp32, as few as meet
  `target_cosine` on the calibration text: 0.9992 by default keeps three of MiniLM's 24
  inputs fp32 (an attention output and two FFN outputs) and >= 0.9991 on other text, at
  1.61-1.63x the fp32 graph's tokens per CPU-second (1.69-1.78x wall clock) on a quiet
  machine, on one thread. On two, one call ran only 1.24x fp32's: the per-token quantisation
  and the passes around each int8 product are small memory-bound operators that ONNX
  Runtime's pool does not speed up (some ran slower on 2 threads than on 1). Two 1-thread
  engine lanes (OnnxEngine) gave 1.55-1.75x, and the server 1.67-1.69x fp32's tokens/s on
  passages and sentences while fp32 ran one 2-thread lane; with fp32 on 1-thread lanes too,
  1.40-1.50x through the server and 1.49-1.66x in-process (on a busy host).
- all-mpnet-base-v2 is harder: at the default target five inputs stay fp32, min cosine 0.9992
  on fixture and held-out text but 0.9979 on ~300 generated texts (all int8 0.9978; the
  previous recipe 0.9972 at its 0.9993 target). Its calibration text does not show the
  generated texts' worst case, so its int8 variant keeps less than the 0.999 promised.
"""

from __future__ import annotations

import copy
import platform
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from ember.engines.onnx_graphs.builder import MICROSOFT_DOMAIN

__all__ = [
    "CALIBRATION_TEXTS",
    "DEFAULT_TARGET_COSINE",
    "FIDELITY_TEXTS",
    "METADATA_CALIBRATION_COSINE",
    "METADATA_FP32_INPUTS",
    "Fidelity",
    "measure_fidelity",
    "quantize_int8",
]

# One text's token ids, special tokens included: a list, or an array as Ember's tokenizer gives.
TokenIds = Sequence[int] | npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.int64]
Batch = tuple[IndexArray, IndexArray]

# Met on the calibration text, a margin over the 0.999 promised on other text.
DEFAULT_TARGET_COSINE = 0.9992
# An input channel whose calibration |max| exceeds this many times the median channel's is an
# outlier and stays fp32, the largest few per input (more bought MiniLM nothing).
_OUTLIER_RATIO = 3.0
_MAX_OUTLIERS = 4
# SmoothQuant's migration strength: each LayerNorm output channel is divided by
# sqrt(max|x| / max|w|), splitting its range between activation and weight.
_SMOOTHING_ALPHA = 0.5
# GPTQ's damping, as a share of the mean Hessian diagonal. Large, because ~500 calibration
# tokens estimate a 384- or 1536-wide Hessian poorly: 0.01 overfits them and does worse than
# plain rounding on held-out text; 1.0 does better.
_GPTQ_DAMPING = 1.0
_NORMALIZATIONS = ("LayerNormalization", "SkipLayerNormalization")
_MIN_SCALE = 1e-8
_SWITCH = "int8_switch"
METADATA_FP32_INPUTS = "ember.int8.fp32_inputs"
METADATA_CALIBRATION_COSINE = "ember.int8.calibration_min_cosine"


@dataclass(frozen=True)
class Fidelity:
    """Cosine similarity of one graph's vectors to a reference graph's over the same texts."""

    min_cosine: float
    mean_cosine: float
    texts: int


def quantize_int8(
    model: onnx.ModelProto,
    calibration: Sequence[TokenIds],
    *,
    target_cosine: float = DEFAULT_TARGET_COSINE,
    signed_weights: bool | None = None,
) -> onnx.ModelProto:
    """An int8 copy of `model` whose vectors for `calibration` keep `target_cosine` to fp32.

    `model` is a graph Ember built: inputs `input_ids` and `attention_mask`, float vectors out,
    products possibly inside a row-chunking Loop. Every MatMul by a constant 2-D float weight is
    a candidate. `calibration` holds token-id sequences of varied text (CALIBRATION_TEXTS,
    tokenised). The inputs left fp32 and the calibration min cosine are recorded in the model's
    metadata; if nothing can be int8 within the target, the copy is all fp32.

    `signed_weights` picks int8 weights (ONNX Runtime's u8s8 kernels) or uint8 ones (u8u8);
    the default is int8 where u8s8 is exact: everywhere but x86 CPUs without VNNI, whose u8s8
    kernel saturates 16-bit pair sums. Quantise on the machine that will serve the graph.
    """
    if not calibration:
        raise ValueError("quantize_int8 needs calibration token ids")
    groups = _find_groups(model)
    if not groups:
        return copy.deepcopy(model)
    activations = _calibrate(model, [group.input for group in groups], calibration)
    signed = _signed_weights_exact() if signed_weights is None else signed_weights
    row_weights = np.concatenate(
        [np.full(max(len(ids), 1), 1 / max(len(ids), 1)) for ids in calibration]
    )
    groups = [_planned(g, activations[g.input], row_weights, signed=signed) for g in groups]
    trial = _Trial(_rewrite(model, groups, switched=True), len(groups), calibration)
    fp32, fidelity = _choose_fp32(trial, groups, target_cosine)
    quantized = _rewrite(model, [g for i, g in enumerate(groups) if i not in fp32], switched=False)
    _set_metadata(quantized, METADATA_FP32_INPUTS, ",".join(groups[i].input for i in sorted(fp32)))
    _set_metadata(quantized, METADATA_CALIBRATION_COSINE, f"{fidelity.min_cosine:.6f}")
    return quantized


def _choose_fp32(
    trial: _Trial, groups: Sequence[_Group], target_cosine: float
) -> tuple[set[int], Fidelity]:
    """The inputs to leave fp32: few, and cheap ones, such that the rest meets the target.

    Each input's damage is measured with it alone int8. Inputs are ranked by damage per weight
    (the compute int8 would save), the count kept fp32 is bisected (fidelity grows nearly
    monotonically with it), then each kept input is tried as int8 again, biggest first.
    """
    everything = set(range(len(groups)))
    fidelity = trial.fidelity(everything)
    if fidelity.min_cosine >= target_cosine:
        return set(), fidelity
    size = [sum(p.weight.size for p in group.products) for group in groups]
    damage = [1.0 - trial.fidelity({index}).min_cosine for index in everything]
    ranked = sorted(everything, key=lambda index: -damage[index] / size[index])
    low, kept, fidelity = 0, len(groups), Fidelity(1.0, 1.0, fidelity.texts)
    while kept - low > 1:
        middle = (low + kept) // 2
        measured = trial.fidelity(everything - set(ranked[:middle]))
        if measured.min_cosine >= target_cosine:
            kept, fidelity = middle, measured
        else:
            low = middle
    fp32 = set(ranked[:kept])
    for index in sorted(fp32, key=lambda index: (-size[index], damage[index])):
        measured = trial.fidelity((everything - fp32) | {index})
        if measured.min_cosine >= target_cosine:
            fp32.discard(index)
            fidelity = measured
    return fp32, fidelity


def measure_fidelity(
    reference: onnx.ModelProto, candidate: onnx.ModelProto, token_ids: Sequence[TokenIds]
) -> Fidelity:
    """Cosine of `candidate`'s vectors to `reference`'s, text by text (min and mean)."""
    batches = list(_batches(token_ids))
    return _compare(_vectors(_session(reference), batches), _vectors(_session(candidate), batches))


@dataclass(frozen=True)
class _Product:
    """One MatMul by a constant weight [in, out], and that weight in int8 once planned."""

    node: str
    weight_name: str
    weight: FloatArray
    codes: npt.NDArray[np.int8 | np.uint8] | None = None
    column_scales: FloatArray | None = None


@dataclass(frozen=True)
class _Plan:
    """How an input is quantised: the channels kept fp32, the divisors that smooth the others
    (the weight rows are multiplied by them) and the zero point of its rows."""

    outliers: IndexArray
    divisors: FloatArray
    zero_point: int


@dataclass(frozen=True)
class _Group:
    """The products that share one input: the input is quantised once for all of them.
    `normalized`: the input is a LayerNorm output, whose channel ranges smoothing evens out."""

    input: str
    width: int
    products: tuple[_Product, ...]
    normalized: bool
    plan: _Plan | None = None


def _find_groups(model: onnx.ModelProto) -> list[_Group]:
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    found: dict[str, list[_Product]] = {}
    normalized: set[str] = set()
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.op_type in _NORMALIZATIONS:
                normalized.add(node.output[0])
            tensor = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
            if tensor is None or tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2:
                continue
            if not node.name:
                raise ValueError("quantize_int8 needs named MatMul nodes")
            weight = numpy_helper.to_array(tensor).astype(np.float32)
            found.setdefault(node.input[0], []).append(_Product(node.name, tensor.name, weight))
    return [
        _Group(name, int(products[0].weight.shape[0]), tuple(products), name in normalized)
        for name, products in found.items()
    ]


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph (Loop and If bodies) inside it."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)


def _calibrate(
    model: onnx.ModelProto, names: Sequence[str], calibration: Sequence[TokenIds]
) -> dict[str, FloatArray]:
    """Rows (tokens) of each named value over the calibration texts.

    Texts run one at a time: a single text is a single row chunk, so values inside a Loop body
    can leave it as scan outputs without shape clashes.
    """
    probe = copy.deepcopy(model)
    exported: dict[str, str] = {}
    outer = {value for node in probe.graph.node for value in node.output}
    outer |= {graph_input.name for graph_input in probe.graph.input}
    for name in names:
        if name in outer:
            exported[name] = name
    for node in probe.graph.node:
        body = next((a.g for a in node.attribute if a.name == "body"), None)
        if node.op_type != "Loop" or body is None:
            continue
        inside = {value for body_node in body.node for value in body_node.output}
        for name in names:
            if name in inside and name not in exported:
                body.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
                exported[name] = f"{name}/calibration"
                node.output.append(exported[name])
    missing = [name for name in names if name not in exported]
    if missing:
        raise ValueError(f"cannot reach {missing[0]!r} to calibrate it")
    for name in exported.values():
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = _session(probe, optimize=False)
    rows: dict[str, list[FloatArray]] = {name: [] for name in names}
    fetch = [exported[name] for name in names]
    for ids, mask in _batches(calibration, size=1):
        for name, value in zip(names, session.run(fetch, _feeds(session, ids, mask)), strict=True):
            array = np.asarray(value, dtype=np.float32)
            rows[name].append(array.reshape(-1, array.shape[-1]))
    return {name: np.concatenate(parts) for name, parts in rows.items()}


def _plan(group: _Group, rows: FloatArray) -> _Plan:
    """Outlier channels from the calibration range, smoothing divisors for a LayerNorm output
    (others measured worse smoothed), and the zero point that suits a typical row."""
    peaks = np.abs(rows).max(axis=0)
    candidates = np.flatnonzero(peaks > _OUTLIER_RATIO * np.median(peaks))
    outliers = np.sort(candidates[np.argsort(-peaks[candidates])][:_MAX_OUTLIERS])
    divisors = np.ones(group.width, dtype=np.float32)
    if group.normalized:
        divisors = _smoothing_divisors(peaks, group.products, outliers)
    kept = np.delete(rows / divisors, outliers, axis=1)
    highs = np.maximum(kept.max(axis=1), 0.0)
    lows = np.minimum(kept.min(axis=1), 0.0)
    negative_share = float(np.median(-lows / np.maximum(highs - lows, _MIN_SCALE)))
    zero_point = int(np.clip(round(255 * negative_share), 1, 254))
    return _Plan(outliers.astype(np.int64), divisors, zero_point)


def _smoothing_divisors(
    peaks: FloatArray, products: Sequence[_Product], outliers: IndexArray
) -> FloatArray:
    """SmoothQuant: x / s and s * w give the same product, and s = max|x|^a / max|w|^(1-a)
    evens out the channel ranges a per-token scale must cover. Geometric mean 1; the outlier
    channels (fp32 anyway) are left alone."""
    weight_peaks = np.max([np.abs(p.weight).max(axis=1) for p in products], axis=0)
    alpha = _SMOOTHING_ALPHA
    divisors = np.maximum(peaks, 1e-5) ** alpha / np.maximum(weight_peaks, 1e-5) ** (1 - alpha)
    divisors[outliers] = 1.0
    divisors /= np.exp(np.log(divisors).mean())
    return np.asarray(divisors, dtype=np.float32)


def _hessian(
    rows: FloatArray, row_weights: npt.NDArray[np.float64], outliers: IndexArray
) -> npt.NDArray[np.float64]:
    """X^T X over the calibration rows, damped, each text weighing the same (a short text's
    vector is its few rows' mean, and short texts are where int8 errors show most); the
    outlier channels, whose weight rows are zero here, drop out."""
    weighted = rows.astype(np.float64) * np.sqrt(row_weights)[:, None]
    hessian = weighted.T @ weighted
    hessian[outliers, :] = 0.0
    hessian[:, outliers] = 0.0
    diagonal = np.diag(hessian).copy()
    mean = float(diagonal[diagonal > 0].mean()) if np.any(diagonal > 0) else 1.0
    diagonal[diagonal == 0] = mean  # a dead or outlier channel: any rounding is as good
    np.fill_diagonal(hessian, diagonal + _GPTQ_DAMPING * mean)
    return hessian


def _gptq_codes(
    weight: FloatArray, scales: FloatArray, hessian: npt.NDArray[np.float64]
) -> npt.NDArray[np.int8]:
    """GPTQ: round the weight one input row at a time, busiest input channels first, and
    spread each row's rounding error over the rows not yet rounded so that X @ W changes
    least on the calibration inputs. The column scales stay fixed."""
    order = np.argsort(-np.diag(hessian), kind="stable")
    remaining = weight[order].astype(np.float64)
    # Rows of the upper Cholesky factor of H^-1 give each step's error propagation.
    upper = np.linalg.cholesky(np.linalg.inv(hessian[np.ix_(order, order)])).T
    codes = np.empty(remaining.shape, dtype=np.int8)
    for row in range(remaining.shape[0]):
        rounded = np.clip(np.rint(remaining[row] / scales), -127, 127)
        codes[row] = rounded
        error = (remaining[row] - rounded * scales) / upper[row, row]
        remaining[row + 1 :] -= np.outer(upper[row, row + 1 :], error)
    unordered = np.empty_like(codes)
    unordered[order] = codes
    return unordered


def _signed_weights_exact() -> bool:
    """Whether ONNX Runtime's u8s8 GEMM is exact here: not on x86 without VNNI (VPMADDUBSW
    saturates), where the u8u8 kernel is."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _planned(
    group: _Group, rows: FloatArray, row_weights: npt.NDArray[np.float64], *, signed: bool
) -> _Group:
    """`group` with its input's plan and its weights in int8: smoothed, symmetric per output
    column, rounded by GPTQ, outlier rows zeroed (the fp32 side product carries them)."""
    plan = _plan(group, rows)
    hessian = _hessian(rows / plan.divisors, row_weights, plan.outliers)
    products = []
    for product in group.products:
        inner = product.weight * plan.divisors[:, None]
        inner[plan.outliers] = 0.0
        scales = np.abs(inner).max(axis=0) / 127.0
        scales[scales == 0] = 1.0
        codes = _gptq_codes(inner, scales, hessian)
        if not signed:  # the same values offset by 128, with weight zero point 128
            codes = (codes.astype(np.int16) + 128).astype(np.uint8)
        products.append(replace(product, codes=codes, column_scales=scales.astype(np.float32)))
    return replace(group, plan=plan, products=tuple(products))


class _Trial:
    """One session holding both paths of every group, an input choosing int8 per group: any
    mix of int8 and fp32 is one run away, and all fp32 is the reference."""

    def __init__(self, switched: onnx.ModelProto, groups: int, calibration: Sequence[TokenIds]):
        self._session = _session(switched)
        self._groups = groups
        self._batches = list(_batches(calibration))
        self._reference = self._vectors(set())

    def fidelity(self, int8: set[int]) -> Fidelity:
        return _compare(self._reference, self._vectors(int8))

    def _vectors(self, int8: set[int]) -> FloatArray:
        switch = np.zeros(self._groups, dtype=bool)
        switch[sorted(int8)] = True
        return _vectors(self._session, self._batches, {_SWITCH: switch})


class _Emitter:
    """Collects the nodes of one graph and the initializers of the model; equal constants
    share one initializer."""

    def __init__(
        self,
        opset: int,
        initializers: list[onnx.TensorProto],
        constants: dict[tuple[str, tuple[int, ...], bytes], str],
    ) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._opset = opset
        self._initializers = initializers
        self._constants = constants

    def constant(self, name: str, array: npt.NDArray[Any]) -> str:
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._initializers.append(numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]

    def scalar(self, name: str, value: float, dtype: type[np.generic] = np.float32) -> str:
        return self.constant(name, np.array(value, dtype=dtype))

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        output: str,
        domain: str | None = None,
        **attributes: Any,
    ) -> str:
        node = helper.make_node(op_type, list(inputs), [output], name=output, domain=domain)
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attributes.items())
        self.nodes.append(node)
        return output

    def reduce(self, op_type: str, value: str, output: str) -> str:
        if self._opset >= 18:  # axes moved from an attribute to an input
            axes = self.constant("int8/axes_last", np.array([-1], dtype=np.int64))
            return self.op(op_type, [value, axes], output, keepdims=1)
        return self.op(op_type, [value], output, axes=[-1], keepdims=1)


def _rewrite(
    model: onnx.ModelProto, groups: Sequence[_Group], *, switched: bool
) -> onnx.ModelProto:
    """A copy of `model` with the products of `groups` int8; `switched` keeps the fp32 products
    too and picks per group by the bool input `int8_switch`."""
    rewritten = copy.deepcopy(model)
    opset = next(o.version for o in rewritten.opset_import if o.domain in ("", "ai.onnx"))
    added: list[onnx.TensorProto] = []
    constants: dict[tuple[str, tuple[int, ...], bytes], str] = {}
    owner = {product.node: index for index, g in enumerate(groups) for product in g.products}
    initializers = {tensor.name: tensor for tensor in rewritten.graph.initializer}
    for graph in _graphs(rewritten.graph):
        emitter = _Emitter(opset, added, constants)
        rows: dict[int, _QuantizedRows] = {}
        # Bias Adds that int8 products with an outlier side product take in (not in the
        # switched trial graph, whose fp32 products still need them).
        biases = {} if switched else _absorbed_biases(graph, owner, groups, initializers)
        absorbed = {add.name for add, _ in biases.values()}
        for node in graph.node:
            if node.name in absorbed:
                continue
            index = owner.get(node.name) if node.op_type == "MatMul" else None
            if index is None:
                emitter.nodes.append(node)
                continue
            group = groups[index]
            if index not in rows:
                rows[index] = _quantize_rows(emitter, group)
            product = next(p for p in group.products if p.node == node.name)
            if not switched:
                add, bias = biases.get(node.name, (None, None))
                output = node.output[0] if add is None else add.output[0]
                _int8_product(emitter, group, product, rows[index], output, bias=bias)
                continue
            output = node.output[0]
            node.output[0] = f"{output}/fp32"
            emitter.nodes.append(node)
            int8 = _int8_product(emitter, group, product, rows[index], f"{output}/int8")
            position = emitter.constant(f"int8/group_{index}", np.array(index, dtype=np.int64))
            flag = emitter.op("Gather", [_SWITCH, position], f"{output}/switch")
            emitter.op("Where", [flag, int8, node.output[0]], output)
        del graph.node[:]
        graph.node.extend(emitter.nodes)
    if switched:
        switch = helper.make_tensor_value_info(_SWITCH, TensorProto.BOOL, [len(groups)])
        rewritten.graph.input.append(switch)
    rewritten.graph.initializer.extend(added)
    if not switched:  # the fp32 weights replaced, the biases taken into side products
        _drop_unused_initializers(rewritten)
    if not any(o.domain == MICROSOFT_DOMAIN for o in rewritten.opset_import):
        rewritten.opset_import.append(helper.make_opsetid(MICROSOFT_DOMAIN, 1))
    return rewritten


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for graph in _graphs(model.graph) for node in graph.node for name in node.input}
    used |= {output.name for output in model.graph.output}
    kept = [tensor for tensor in model.graph.initializer if tensor.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def _absorbed_biases(
    graph: onnx.GraphProto,
    owner: dict[str, int],
    groups: Sequence[_Group],
    initializers: dict[str, onnx.TensorProto],
) -> dict[str, tuple[onnx.NodeProto, FloatArray]]:
    """MatMul name -> (the Add of its bias, the bias) for products with an outlier side
    product whose only consumer adds a constant [out] bias."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: dict[str, tuple[onnx.NodeProto, FloatArray]] = {}
    for node in graph.node:
        index = owner.get(node.name) if node.op_type == "MatMul" else None
        if index is None:
            continue
        plan = groups[index].plan
        following = consumers.get(node.output[0], [])
        if plan is None or not plan.outliers.size or len(following) != 1:
            continue
        add = following[0]
        if not add.name:  # absorbed Adds are skipped by name
            continue
        bias_name = next((name for name in add.input if name != node.output[0]), "")
        if add.op_type != "Add" or len(add.input) != 2 or bias_name not in initializers:
            continue
        product = next(p for p in groups[index].products if p.node == node.name)
        bias = numpy_helper.to_array(initializers[bias_name])
        if bias.shape == (product.weight.shape[1],) and bias.dtype == np.float32:
            found[node.name] = (add, bias)
    return found


@dataclass(frozen=True)
class _QuantizedRows:
    """A group's input quantised once for all its products: uint8 `codes`, the row `scales`
    ([..., 1]) and, where the group has outlier side products, the scales as a [rows, 1]
    column and their inverses, which every side product uses."""

    codes: str
    scales: str
    scale_column: str | None = None
    inverse_column: str | None = None


def _quantize_rows(emitter: _Emitter, group: _Group) -> _QuantizedRows:
    """uint8 codes of the group's input on a per-row grid, outlier channels zeroed, and the row
    scales: scale = max(row max / (255 - zero), -row min / zero)."""
    assert group.plan is not None
    plan, prefix = group.plan, f"int8/{group.input}"
    zero = plan.zero_point
    inner = group.input
    if plan.outliers.size or np.any(plan.divisors != 1.0):
        # One Mul both smooths the channels and zeroes the outliers (the side product's).
        factors = (1.0 / plan.divisors).astype(np.float32)
        factors[plan.outliers] = 0.0
        inner = emitter.op(
            "Mul", [inner, emitter.constant(f"{prefix}/factors", factors)], f"{prefix}/in"
        )
    high = emitter.reduce("ReduceMax", inner, f"{prefix}/high")
    low = emitter.reduce("ReduceMin", inner, f"{prefix}/low")
    high = emitter.op(
        "Mul", [high, emitter.scalar(f"int8/by_{255 - zero}", 1 / (255 - zero))], high + "_s"
    )
    low = emitter.op("Mul", [low, emitter.scalar(f"int8/by_minus_{zero}", -1 / zero)], low + "_s")
    floor = emitter.scalar("int8/min_scale", _MIN_SCALE)
    scales = emitter.op("Max", [high, low, floor], f"{prefix}/scale")
    # Per-axis QuantizeLinear over a [rows, width] view quantises each row by its own scale in
    # one pass (no separate division); the views cost no copies.
    rows = emitter.constant(f"int8/rows_of_{group.width}", np.array([-1, group.width], np.int64))
    flat_scales = emitter.op(
        "Reshape", [scales, emitter.constant("int8/flat", np.array([-1]))], f"{prefix}/flat_scale"
    )
    zero_points = emitter.op(
        "Expand",
        [
            emitter.scalar(f"int8/zero_{zero}", zero, np.uint8),
            emitter.op("Shape", [flat_scales], f"{prefix}/rows"),
        ],
        f"{prefix}/zero_points",
    )
    flat_codes = emitter.op(
        "QuantizeLinear",
        [emitter.op("Reshape", [inner, rows], f"{prefix}/flat_in"), flat_scales, zero_points],
        f"{prefix}/flat_codes",
        axis=0,
    )
    shape = emitter.op("Shape", [inner], f"{prefix}/shape")
    codes = emitter.op("Reshape", [flat_codes, shape], f"{prefix}/codes")
    if not plan.outliers.size:
        return _QuantizedRows(codes, scales)
    column = emitter.constant("int8/rows_of_1", np.array([-1, 1], dtype=np.int64))
    scale_column = emitter.op("Reshape", [scales, column], f"{prefix}/scale_column")
    inverse = emitter.op("Reciprocal", [scale_column], f"{prefix}/inverse_column")
    return _QuantizedRows(codes, scales, scale_column, inverse)


def _int8_product(
    emitter: _Emitter,
    group: _Group,
    product: _Product,
    rows: _QuantizedRows,
    output: str,
    *,
    bias: FloatArray | None = None,
) -> str:
    """MatMulIntegerToFloat(codes, int8 weight) * row scales, plus the fp32 outlier product
    and `bias` (the product's bias Add, taken in) when there is an outlier product."""
    assert group.plan is not None
    plan, prefix = group.plan, f"int8/{product.weight_name}"
    assert product.codes is not None
    assert product.column_scales is not None
    inputs = [
        rows.codes,
        emitter.constant(f"{prefix}/codes", product.codes),
        emitter.scalar("int8/one", 1.0),
        emitter.constant(f"{prefix}/column_scales", product.column_scales),
        emitter.scalar(f"int8/zero_{plan.zero_point}", plan.zero_point, np.uint8),
    ]
    if product.codes.dtype == np.uint8:
        inputs.append(emitter.scalar("int8/zero_128", 128, np.uint8))
    unscaled = emitter.op(
        "MatMulIntegerToFloat", inputs, f"{prefix}/unscaled", domain=MICROSOFT_DOMAIN
    )
    if rows.scale_column is None or rows.inverse_column is None:
        assert bias is None
        return emitter.op("Mul", [unscaled, rows.scales], output)
    # rows * (int8 result + (outliers / rows) @ W[outliers] + (1 / rows) * bias), on 2-D
    # views: the Gemm adds the int8 result as it writes, and the bias rides in as one more
    # side-product column, so the row scales and the bias cost one pass over the output, not
    # two. (The same sum as int8 * rows + outliers @ W + bias, up to float rounding.)
    count, width = int(plan.outliers.size), int(product.weight.shape[1])
    picked = emitter.op(
        "Gather",
        [group.input, emitter.constant(f"{prefix}/outliers", plan.outliers)],
        f"{prefix}/outlier_in",
        axis=-1,
    )
    rows_of = emitter.constant(f"int8/rows_of_{count}", np.array([-1, count], dtype=np.int64))
    rows_out = emitter.constant(f"int8/rows_of_{width}", np.array([-1, width], dtype=np.int64))
    inverse = rows.inverse_column
    outlier_rows = emitter.op("Reshape", [picked, rows_of], f"{prefix}/outlier_rows")
    side = emitter.op("Mul", [outlier_rows, inverse], f"{prefix}/outlier_side")
    weight = product.weight[plan.outliers]
    if bias is not None:
        side = emitter.op("Concat", [side, inverse], f"{prefix}/side_with_bias", axis=1)
        weight = np.vstack([weight, bias[None, :]]).astype(np.float32)
    summed = emitter.op(
        "Gemm",
        [
            side,
            emitter.constant(f"{prefix}/outlier_weight", weight),
            emitter.op("Reshape", [unscaled, rows_out], f"{prefix}/unscaled_rows"),
        ],
        f"{prefix}/sum_rows",
    )
    scaled = emitter.op("Mul", [summed, rows.scale_column], f"{prefix}/scaled_rows")
    shape = emitter.op("Shape", [unscaled], f"{prefix}/shape")
    return emitter.op("Reshape", [scaled, shape], output)


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
            return
    model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))


def _batches(token_ids: Sequence[TokenIds], size: int = 16) -> Iterator[Batch]:
    """Right-padded batches in the given order. Pad id 0 is safe: pad tokens are masked out of
    attention and pooling, and each token is quantised on its own scale."""
    for start in range(0, len(token_ids), size):
        chunk = token_ids[start : start + size]
        width = max(1, *(len(ids) for ids in chunk))
        ids = np.zeros((len(chunk), width), dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        for row, sequence in enumerate(chunk):
            ids[row, : len(sequence)] = sequence
            mask[row, : len(sequence)] = 1
        yield ids, mask


def _session(model: onnx.ModelProto, *, optimize: bool = True) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )


def _feeds(session: Any, ids: IndexArray, mask: IndexArray) -> dict[str, Any]:
    known = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {i.name: known[i.name] for i in session.get_inputs() if i.name in known}


def _vectors(
    session: Any, batches: Sequence[Batch], extra: dict[str, Any] | None = None
) -> FloatArray:
    output = session.get_outputs()[0].name
    parts: list[FloatArray] = []
    for ids, mask in batches:
        feeds = {**_feeds(session, ids, mask), **(extra or {})}
        parts.append(np.asarray(session.run([output], feeds)[0], dtype=np.float32))
    return np.concatenate(parts)


def _compare(reference: FloatArray, candidate: FloatArray) -> Fidelity:
    def unit(vectors: FloatArray) -> FloatArray:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)

    cosines = (unit(reference) * unit(candidate)).sum(axis=1)
    return Fidelity(float(cosines.min()), float(cosines.mean()), int(cosines.size))


# Texts to fit on and texts to report on: apart, so the recorded cosine is not the one fitted.
# Very short inputs come first and are many: a vector pooled over 3-4 tokens, [CLS] and [SEP]
# among them, is where int8 errors show most.
CALIBRATION_TEXTS: tuple[str, ...] = (
    "yes",
    "Thanks!",
    "between",
    "of",
    "red apple",
    "per the",
    "it is the",
    "New York",
    "2024-05-01",
    "Why?",
    "reset password",
    "He said no.",
    "The cat sat on the mat.",
    "Where is the nearest train station?",
    "Please send me the invoice for last month.",
    "Photosynthesis turns light into chemical energy in plants.",
    "The committee postponed its decision until the budget review in March.",
    "I can't log in: the app keeps saying my session expired, even right after I sign in.",
    "A pinch of salt, two eggs, 200 g of flour and a cup of milk make a simple batter.",
    "def add(a, b):\n    return a + b",
    "SELECT name, count(*) FROM users GROUP BY name ORDER BY 2 DESC;",
    "| id | name | score |\n|----|------|-------|\n| 1 | Ada | 98 |",
    "Error 504: upstream timed out after 30000 ms (retry 3/3)",
    "https://example.com/docs/v2/install?lang=en#linux",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "La réunion est reportée à jeudi prochain.",
    "The treaty, signed after years of negotiation, set fishing quotas for the northern "
    "waters and created a joint commission to settle disputes between the fleets.",
    "Vaccines train the immune system to recognise a pathogen without causing the disease. "
    "Most contain an inactivated virus, a protein fragment, or instructions for making one, "
    "and the memory cells they leave behind respond quickly if the real infection arrives.",
    "The first step is to measure. Before changing anything, record how long each stage of "
    "the pipeline takes on a realistic workload, repeat the measurement a few times, and note "
    "how much it varies. Only then try one change at a time, and keep the ones that move the "
    "median by more than the noise. Most slow systems are slow in one place, and it is rarely "
    "the place anyone guessed before measuring.",
)

FIDELITY_TEXTS: tuple[str, ...] = (
    "no",
    "Hello",
    "which is",
    "agreed",
    "blue sky",
    "doubt that",
    "London",
    "3.14159",
    "How?",
    "order status",
    "She left early.",
    "The dog barked at the mailman.",
    "What time does the museum open on Sundays?",
    "Could you review my pull request before lunch?",
    "Glaciers carve valleys as they slowly move downhill.",
    "The council approved the new bike lanes after a long public debate.",
    "My laptop fan is loud and the battery drains fast since the last update; any ideas?",
    "Mix the yeast with warm water, wait ten minutes, then knead the dough for eight more.",
    "for i in range(10):\n    print(i * i)",
    "curl -X POST -H 'Content-Type: application/json' -d '{\"input\": \"hi\"}' localhost:8080",
    '<div class="card"><h2>Title</h2><p>Body text</p></div>',
    "WARN disk usage at 91% on /dev/sda1 (threshold 90%)",
    "El tren sale a las ocho de la mañana.",
    "Il pleut depuis trois jours sans arrêt.",
    "Coral reefs cover a tiny fraction of the ocean floor yet shelter about a quarter of all "
    "marine species, which is why bleaching events worry biologists so much.",
    "Interest rates affect almost every price in an economy. When a central bank raises them, "
    "borrowing becomes more expensive, households and firms spend less, and demand cools; "
    "lower rates work the other way, at the risk of higher inflation later.",
    "Good documentation starts from the reader's question. A tutorial walks a newcomer through "
    "one complete task; a how-to guide solves one specific problem for someone who already "
    "knows the basics; a reference lists every option precisely; and an explanation says why "
    "the system is shaped the way it is. Mixing the four in one page serves none of them well.",
)
