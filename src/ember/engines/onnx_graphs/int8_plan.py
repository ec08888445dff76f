"""How each int8 product is planned from calibration: the products that share an input, the
input's outlier channels, smoothing and zero point, and GPTQ-rounded int8 weights."""

from __future__ import annotations

import copy
import platform
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from ember.engines.onnx_graphs.builder import all_graphs
from ember.engines.onnx_graphs.int8_runs import (
    FloatArray,
    IndexArray,
    TokenIds,
    feeds_for,
    padded_batches,
    session_for,
)

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
# The smallest quantisation scale: an all-zero row or column still divides safely.
MIN_SCALE = 1e-8


@dataclass(frozen=True)
class Product:
    """One MatMul by a constant weight [in, out], and that weight in int8 once planned."""

    node: str
    weight_name: str
    weight: FloatArray
    codes: npt.NDArray[np.int8 | np.uint8] | None = None
    column_scales: FloatArray | None = None


@dataclass(frozen=True)
class InputPlan:
    """How an input is quantised: the channels kept fp32, the divisors that smooth the others
    (the weight rows are multiplied by them) and the zero point of its rows."""

    outliers: IndexArray
    divisors: FloatArray
    zero_point: int


@dataclass(frozen=True)
class InputGroup:
    """The products that share one input: the input is quantised once for all of them.
    `normalized`: the input is a LayerNorm output, whose channel ranges smoothing evens out."""

    input: str
    width: int
    products: tuple[Product, ...]
    normalized: bool
    plan: InputPlan | None = None


def find_groups(model: onnx.ModelProto) -> list[InputGroup]:
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    found: dict[str, list[Product]] = {}
    normalized: set[str] = set()
    for graph in all_graphs(model.graph):
        for node in graph.node:
            if node.op_type in _NORMALIZATIONS:
                normalized.add(node.output[0])
            tensor = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
            if tensor is None or tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2:
                continue
            if not node.name:
                raise ValueError("quantize_int8 needs named MatMul nodes")
            weight = numpy_helper.to_array(tensor).astype(np.float32)
            found.setdefault(node.input[0], []).append(Product(node.name, tensor.name, weight))
    return [
        InputGroup(name, int(products[0].weight.shape[0]), tuple(products), name in normalized)
        for name, products in found.items()
    ]


def calibrate(
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
    session = session_for(probe, optimize=False)
    rows: dict[str, list[FloatArray]] = {name: [] for name in names}
    fetch = [exported[name] for name in names]
    for ids, mask in padded_batches(calibration, size=1):
        for name, value in zip(
            names, session.run(fetch, feeds_for(session, ids, mask)), strict=True
        ):
            array = np.asarray(value, dtype=np.float32)
            rows[name].append(array.reshape(-1, array.shape[-1]))
    return {name: np.concatenate(parts) for name, parts in rows.items()}


def _plan(group: InputGroup, rows: FloatArray) -> InputPlan:
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
    negative_share = float(np.median(-lows / np.maximum(highs - lows, MIN_SCALE)))
    zero_point = int(np.clip(round(255 * negative_share), 1, 254))
    return InputPlan(outliers.astype(np.int64), divisors, zero_point)


def _smoothing_divisors(
    peaks: FloatArray, products: Sequence[Product], outliers: IndexArray
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


def signed_weights_exact() -> bool:
    """Whether ONNX Runtime's u8s8 GEMM is exact here: not on x86 without VNNI (VPMADDUBSW
    saturates), where the u8u8 kernel is."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def planned(
    group: InputGroup, rows: FloatArray, row_weights: npt.NDArray[np.float64], *, signed: bool
) -> InputGroup:
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
