"""Small typed helpers for building ONNX graphs from checkpoint tensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

FloatArray = npt.NDArray[np.float32]

# ONNX Runtime's contrib operators (Attention, SkipLayerNormalization, ...) live here.
MICROSOFT_DOMAIN = "com.microsoft"
DEFAULT_OPSET = 17


class GraphBuilder:
    """Collects nodes, initializers and graph inputs/outputs, giving every value a unique name.

    Architectures describe their forward pass with `op`/`node` calls and get back value names,
    so they never have to invent or track names themselves.
    """

    def __init__(self, name: str, *, opset: int = DEFAULT_OPSET) -> None:
        self._name = name
        self._opset = opset
        self._nodes: list[onnx.NodeProto] = []
        self._initializers: list[onnx.TensorProto] = []
        self._inputs: list[onnx.ValueInfoProto] = []
        self._outputs: list[onnx.ValueInfoProto] = []
        self._used_names: set[str] = set()
        self._counters: dict[str, int] = {}
        self._domains: set[str] = set()
        self._constants: dict[tuple[str, bytes], str] = {}

    def unique_name(self, hint: str) -> str:
        """Return `hint`, or `hint_N` if it is taken, and reserve it."""
        name = hint
        while name in self._used_names:
            count = self._counters.get(hint, 0) + 1
            self._counters[hint] = count
            name = f"{hint}_{count}"
        self._used_names.add(name)
        return name

    def add_input(self, name: str, elem_type: int, shape: Sequence[int | str]) -> str:
        """Declare a graph input; `shape` entries that are strings are dynamic dimensions."""
        self._reserve_exact(name)
        self._inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def add_output(self, value: str, elem_type: int, shape: Sequence[int | str]) -> None:
        """Declare an existing value (for instance one named via `op(..., output=)`) an output."""
        self._outputs.append(helper.make_tensor_value_info(value, elem_type, list(shape)))

    def initializer(self, hint: str, array: npt.NDArray[Any]) -> str:
        """Store `array` as a constant of the graph and return its (unique) name."""
        name = self.unique_name(hint)
        self._initializers.append(numpy_helper.from_array(np.asarray(array, order="C"), name))
        return name

    def constant(self, hint: str, array: npt.NDArray[Any]) -> str:
        """Like `initializer`, but equal small constants (axes, shapes, scalars) share one name."""
        key = (f"{array.dtype.str}{array.shape}", np.asarray(array, order="C").tobytes())
        name = self._constants.get(key)
        if name is None:
            name = self._constants[key] = self.initializer(hint, array)
        return name

    def int64s(self, hint: str, values: Sequence[int]) -> str:
        """A 1-D int64 constant, as Reshape, Slice and ReduceSum want their shapes and axes."""
        return self.constant(hint, np.asarray(values, dtype=np.int64))

    def int64_scalar(self, hint: str, value: int) -> str:
        """A 0-D int64 constant, e.g. a Gather index that drops the gathered axis."""
        return self.constant(hint, np.asarray(value, dtype=np.int64))

    def float_scalar(self, hint: str, value: float) -> str:
        """A 0-D float32 constant for elementwise arithmetic."""
        return self.constant(hint, np.asarray(value, dtype=np.float32))

    def node(
        self,
        op_type: str,
        inputs: Sequence[str],
        *,
        num_outputs: int = 1,
        outputs: Sequence[str] | None = None,
        domain: str = "",
        **attributes: Any,
    ) -> list[str]:
        """Add one node and return its output names (`""` in `inputs` skips an optional one)."""
        if outputs is None:
            hint = op_type.lower()
            outputs = [self.unique_name(hint) for _ in range(num_outputs)]
        else:
            for output in outputs:
                self._reserve_exact(output)
        if domain:
            self._domains.add(domain)
        self._nodes.append(
            helper.make_node(
                op_type,
                list(inputs),
                list(outputs),
                name=self.unique_name(f"node_{op_type}"),
                domain=domain or None,
                **attributes,
            )
        )
        return list(outputs)

    def op(
        self, op_type: str, *inputs: str, output: str | None = None, domain: str = "", **attrs: Any
    ) -> str:
        """Add a single-output node and return that output's name."""
        outputs = None if output is None else [output]
        return self.node(op_type, inputs, outputs=outputs, domain=domain, **attrs)[0]

    def build(self, *, producer: str = "ember", check: bool = True) -> onnx.ModelProto:
        """Assemble the model; `check` runs the ONNX checker (cheap, it skips shape inference)."""
        graph = helper.make_graph(
            self._nodes, self._name, self._inputs, self._outputs, self._initializers
        )
        opsets = [helper.make_opsetid("", self._opset)]
        opsets += [helper.make_opsetid(domain, 1) for domain in sorted(self._domains)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name=producer)
        # The lowest IR version the opsets allow: runtimes older than the installed onnx
        # package would otherwise reject the model for its IR version alone.
        model.ir_version = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
        if check:
            onnx.checker.check_model(model)
        return model

    def _reserve_exact(self, name: str) -> None:
        if name in self._used_names:
            raise ValueError(f"graph value name {name!r} is already used")
        self._used_names.add(name)


class WeightSource:
    """Checkpoint tensors looked up by their canonical names, whatever prefix the file adds.

    Hugging Face checkpoints name the same tensor `embeddings.x` or `bert.embeddings.x`
    depending on the class that saved them; lookups try each prefix in turn.
    """

    def __init__(self, weights: Mapping[str, npt.NDArray[Any]], prefixes: Sequence[str]) -> None:
        self._weights = weights
        self._prefixes = tuple(prefixes)

    def get(self, name: str, shape: Sequence[int], *, aliases: Sequence[str] = ()) -> FloatArray:
        """The float32 tensor `name` (or one of `aliases`), checked to have `shape`.

        Raises ValueError naming the tensor when it is missing, not floating point, or
        shaped differently from what the config implies.
        """
        for candidate in (name, *aliases):
            for prefix in self._prefixes:
                array = self._weights.get(prefix + candidate)
                if array is not None:
                    return _checked_float32(prefix + candidate, array, tuple(shape))
        tried = ", ".join(repr(prefix + name) for prefix in self._prefixes)
        raise ValueError(f"weights are missing tensor {name!r} (tried {tried})")


def _checked_float32(name: str, array: npt.NDArray[Any], shape: tuple[int, ...]) -> FloatArray:
    if array.shape != shape:
        raise ValueError(
            f"tensor {name!r} has shape {tuple(array.shape)}, but the config implies {shape}"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"tensor {name!r} has dtype {array.dtype}, expected floating point")
    return np.asarray(array, dtype=np.float32)
