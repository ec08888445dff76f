"""Writes int8 products into an encoder graph: each planned input quantised per row once, its
products as MatMulIntegerToFloat with fp32 outlier side products; optionally beside the fp32
products, chosen per input at run time (the trial graph)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from ember.engines.onnx_graphs.builder import MICROSOFT_DOMAIN, all_graphs
from ember.engines.onnx_graphs.int8_plan import MIN_SCALE, InputGroup, Product
from ember.engines.onnx_graphs.int8_runs import FloatArray

SWITCH = "int8_switch"


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


def rewrite(
    model: onnx.ModelProto, groups: Sequence[InputGroup], *, switched: bool
) -> onnx.ModelProto:
    """A copy of `model` with the products of `groups` int8; `switched` keeps the fp32 products
    too and picks per group by the bool input `int8_switch`."""
    rewritten = copy.deepcopy(model)
    opset = next(o.version for o in rewritten.opset_import if o.domain in ("", "ai.onnx"))
    added: list[onnx.TensorProto] = []
    constants: dict[tuple[str, tuple[int, ...], bytes], str] = {}
    owner = {product.node: index for index, g in enumerate(groups) for product in g.products}
    initializers = {tensor.name: tensor for tensor in rewritten.graph.initializer}
    for graph in all_graphs(rewritten.graph):
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
            flag = emitter.op("Gather", [SWITCH, position], f"{output}/switch")
            emitter.op("Where", [flag, int8, node.output[0]], output)
        del graph.node[:]
        graph.node.extend(emitter.nodes)
    if switched:
        switch = helper.make_tensor_value_info(SWITCH, TensorProto.BOOL, [len(groups)])
        rewritten.graph.input.append(switch)
    rewritten.graph.initializer.extend(added)
    if not switched:  # the fp32 weights replaced, the biases taken into side products
        _drop_unused_initializers(rewritten)
    if not any(o.domain == MICROSOFT_DOMAIN for o in rewritten.opset_import):
        rewritten.opset_import.append(helper.make_opsetid(MICROSOFT_DOMAIN, 1))
    return rewritten


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for graph in all_graphs(model.graph) for node in graph.node for name in node.input}
    used |= {output.name for output in model.graph.output}
    kept = [tensor for tensor in model.graph.initializer if tensor.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def _absorbed_biases(
    graph: onnx.GraphProto,
    owner: dict[str, int],
    groups: Sequence[InputGroup],
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


def _quantize_rows(emitter: _Emitter, group: InputGroup) -> _QuantizedRows:
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
    floor = emitter.scalar("int8/min_scale", MIN_SCALE)
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
    group: InputGroup,
    product: Product,
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
