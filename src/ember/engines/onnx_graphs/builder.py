"""Small typed helpers for building ONNX graphs from checkpoint tensors."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from ember.pooling import NORMALIZED_METADATA, Pooling

FloatArray = npt.NDArray[np.float32]

DEFAULT_OPSET = 17
# ONNX Runtime's contrib operators (Attention, BiasGelu, ...) live in this domain.
MICROSOFT_DOMAIN = "com.microsoft"
# The initializer holding map_row_chunks' block size, read back by engines that must know it.
CHUNK_TOKENS_CONSTANT = "chunk_tokens"


@dataclass
class _ModelState:
    """What a model and all its subgraphs share: value names, initializers, opset domains."""

    used_names: set[str] = field(default_factory=set)
    counters: dict[str, int] = field(default_factory=dict)
    constants: dict[tuple[str, bytes], str] = field(default_factory=dict)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    domains: set[str] = field(default_factory=set)


class GraphBuilder:
    """Collects nodes, initializers and graph inputs/outputs, giving every value a unique name.

    Architectures describe their forward pass with `op`/`node` calls and get back value names,
    so they never have to invent or track names themselves. `subgraph()` gives a builder for a
    Loop/If body that shares the names and keeps its initializers in the outer graph.
    """

    def __init__(self, name: str, *, opset: int = DEFAULT_OPSET) -> None:
        self._name = name
        self._opset = opset
        self._state = _ModelState()
        self._nodes: list[onnx.NodeProto] = []
        self._inputs: list[onnx.ValueInfoProto] = []
        self._outputs: list[onnx.ValueInfoProto] = []

    @property
    def opset(self) -> int:
        return self._opset

    def subgraph(self, name: str) -> GraphBuilder:
        """A builder for a control-flow body; it may use every value of this graph by name."""
        child = GraphBuilder(name, opset=self._opset)
        child._state = self._state
        return child

    def unique_name(self, hint: str) -> str:
        """Return `hint`, or `hint_N` if it is taken, and reserve it."""
        state = self._state
        name = hint
        while name in state.used_names:
            state.counters[hint] = state.counters.get(hint, 0) + 1
            name = f"{hint}_{state.counters[hint]}"
        state.used_names.add(name)
        return name

    def add_input(
        self,
        name: str,
        elem_type: int,
        shape: Sequence[int | str] | None,
        *,
        unique: bool = False,
    ) -> str:
        """Declare a graph input; string dimensions are dynamic, `shape=None` is a scalar.

        The name is used as given (an error if taken) unless `unique`, which makes it a hint,
        as subgraph inputs want.
        """
        name = self._claim(name, unique=unique)
        self._inputs.append(helper.make_tensor_value_info(name, elem_type, _dims(shape)))
        return name

    def add_sequence_input(self, name: str, elem_type: int, *, unique: bool = False) -> str:
        """Declare a tensor-sequence input, e.g. a Loop body's carried accumulator."""
        name = self._claim(name, unique=unique)
        self._inputs.append(helper.make_tensor_sequence_value_info(name, elem_type, None))
        return name

    def add_output(self, value: str, elem_type: int, shape: Sequence[int | str] | None) -> None:
        """Declare an existing value (for instance one named via `op(..., output=)`) an output."""
        self._outputs.append(helper.make_tensor_value_info(value, elem_type, _dims(shape)))

    def add_sequence_output(self, value: str, elem_type: int) -> None:
        self._outputs.append(helper.make_tensor_sequence_value_info(value, elem_type, None))

    def initializer(self, hint: str, array: npt.NDArray[Any]) -> str:
        """Store `array` as a constant of the model and return its (unique) name."""
        name = self.unique_name(hint)
        tensor = numpy_helper.from_array(np.asarray(array, order="C"), name)
        self._state.initializers.append(tensor)
        return name

    def constant(self, hint: str, array: npt.NDArray[Any]) -> str:
        """Like `initializer`, but equal small constants (axes, shapes, scalars) share one name."""
        contiguous = np.asarray(array, order="C")
        key = (f"{contiguous.dtype.str}{contiguous.shape}", contiguous.tobytes())
        name = self._state.constants.get(key)
        if name is None:
            name = self._state.constants[key] = self.initializer(hint, contiguous)
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
            outputs = [self.unique_name(op_type.lower()) for _ in range(num_outputs)]
        else:
            for output in outputs:
                self._reserve_exact(output)
        if domain:
            self._state.domains.add(domain)
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

    def graph(self) -> onnx.GraphProto:
        """This builder's graph; a subgraph's initializers stay with the outermost graph."""
        return helper.make_graph(self._nodes, self._name, self._inputs, self._outputs)

    def build(
        self, *, producer: str = "ember", check: bool = True, normalized: bool = False
    ) -> onnx.ModelProto:
        """Assemble the model; `check` runs the ONNX checker (cheap, it skips shape inference).
        `normalized` marks a graph whose output rows are unit vectors (see NORMALIZED_METADATA).
        """
        graph = self.graph()
        graph.initializer.extend(self._state.initializers)
        opsets = [helper.make_opsetid("", self._opset)]
        opsets += [helper.make_opsetid(domain, 1) for domain in sorted(self._state.domains)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name=producer)
        # The lowest IR version the opsets allow: runtimes older than the installed onnx
        # package would otherwise reject the model for its IR version alone.
        model.ir_version = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
        if normalized:
            set_metadata(model, NORMALIZED_METADATA, "true")
        if check:
            onnx.checker.check_model(model)
        return model

    def _claim(self, name: str, *, unique: bool) -> str:
        if unique:
            return self.unique_name(name)
        self._reserve_exact(name)
        return name

    def _reserve_exact(self, name: str) -> None:
        if name in self._state.used_names:
            raise ValueError(f"graph value name {name!r} is already used")
        self._state.used_names.add(name)


def _dims(shape: Sequence[int | str] | None) -> list[int | str]:
    return [] if shape is None else list(shape)


ChunkBody = Callable[[GraphBuilder, list[str]], str]


def map_row_chunks(
    builder: GraphBuilder, inputs: Sequence[str], *, chunk_tokens: int, body: ChunkBody
) -> str:
    """Run `body` on consecutive row blocks of `inputs` and concatenate its float outputs.

    `inputs` are [batch, sequence, ...] tensors; each block holds about `chunk_tokens`
    tokens (at least one row). On CPU a transformer over a large batch is limited by memory
    bandwidth: its activations (tens of MB) no longer fit in cache. Blocks of ~1k tokens keep
    them cached while the matrix products stay large enough to run near peak. `body` gets a
    subgraph builder and the names of the row slices, and returns a [rows, ...] float value.
    """
    shape = builder.op("Shape", inputs[0])
    batch = builder.op("Gather", shape, builder.int64_scalar("index", 0), axis=0)
    sequence = builder.op("Gather", shape, builder.int64_scalar("index", 1), axis=0)
    one = builder.int64_scalar("one", 1)
    safe_sequence = builder.op("Max", sequence, one)
    block = builder.int64_scalar(CHUNK_TOKENS_CONSTANT, chunk_tokens)
    rows = builder.op("Div", block, safe_sequence)
    rows = builder.op("Max", rows, one)
    # ceil(batch / rows) iterations, and one for an empty batch: an empty sequence can't concat.
    chunks = builder.op("Div", builder.op("Sub", builder.op("Add", batch, rows), one), rows)
    chunks = builder.op("Max", chunks, one)
    empty = builder.op("SequenceEmpty", dtype=TensorProto.FLOAT)

    loop = builder.subgraph("row_chunk")
    iteration = loop.add_input("iteration", TensorProto.INT64, None, unique=True)
    condition = loop.add_input("condition", TensorProto.BOOL, None, unique=True)
    carried = loop.add_sequence_input("chunks_so_far", TensorProto.FLOAT, unique=True)
    start = loop.op("Mul", iteration, rows)
    stop = loop.op("Min", loop.op("Add", start, rows), batch)
    axis = loop.int64s("axis_0", [0])
    start, stop = (loop.op("Unsqueeze", bound, axis) for bound in (start, stop))
    sliced = [loop.op("Slice", value, start, stop, axis) for value in inputs]
    result = body(loop, sliced)
    loop.add_output(loop.op("Identity", condition), TensorProto.BOOL, None)
    loop.add_sequence_output(loop.op("SequenceInsert", carried, result), TensorProto.FLOAT)

    gathered = builder.op("Loop", chunks, "", empty, body=loop.graph())
    return builder.op("ConcatFromSequence", gathered, axis=0)


def pool_tokens(builder: GraphBuilder, hidden: str, mask: str, pooling: Pooling) -> str:
    """[batch, seq, hidden] -> [batch, hidden] as sentence-transformers' Pooling module does.

    `mask` is the int64 attention mask. mean averages the tokens whose mask is 1 (count
    clamped to 1e-9), cls takes the first token, lasttoken the last token whose mask is 1.
    """
    if pooling == "cls":
        return builder.op("Gather", hidden, builder.int64_scalar("index", 0), axis=1)
    mask_float = builder.op("Cast", mask, to=TensorProto.FLOAT)
    weights = mask_float if pooling == "mean" else _last_token_one_hot(builder, mask)
    # [batch, 1, seq] @ [batch, seq, hidden]: the weighted sum over tokens as one batched GEMM.
    axis_1 = builder.int64s("axis_1", [1])
    summed = builder.op("MatMul", builder.op("Unsqueeze", weights, axis_1), hidden)
    summed = builder.op("Squeeze", summed, axis_1)
    if pooling != "mean":
        return summed
    counts = builder.op("ReduceSum", mask_float, axis_1, keepdims=1)
    counts = builder.op("Max", counts, builder.float_scalar("min_count", 1e-9))
    return builder.op("Div", summed, counts)


def _last_token_one_hot(builder: GraphBuilder, mask: str) -> str:
    """Float [batch, seq] with a 1 at each row's last position whose mask is 1 (at 0 if none)."""
    length = builder.op("Gather", builder.op("Shape", mask), builder.int64_scalar("index", 1))
    zero, one = builder.int64_scalar("zero", 0), builder.int64_scalar("one", 1)
    positions = builder.op("Range", zero, length, one)
    # Masked positions become 0, so the largest product sits at the last real token.
    last = builder.op("ArgMax", builder.op("Mul", mask, positions), axis=1, keepdims=1)
    return builder.op("Cast", builder.op("Equal", positions, last), to=TensorProto.FLOAT)


def l2_normalize(builder: GraphBuilder, vectors: str) -> str:
    """Rows divided by max(||row||, 1e-12): torch's F.normalize, as sentence-transformers does."""
    squares = builder.op("Mul", vectors, vectors)
    norms = builder.op("Sqrt", builder.op("ReduceSum", squares, builder.int64s("axis_1", [1])))
    norms = builder.op("Max", norms, builder.float_scalar("min_norm", 1e-12))
    return builder.op("Div", vectors, norms)


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


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph (Loop and If bodies) inside it."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from all_graphs(attribute.g)


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    """Set one of the model's metadata entries, replacing any of the same key."""
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
            return
    model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
