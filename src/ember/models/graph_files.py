"""The files of a graph Ember builds: the ONNX graph, and its lookup tables beside it as
external data, which ONNX Runtime memory-maps instead of copying.

A token-embedding table is half of a small encoder's weights (MiniLM: 47 of 90 MB) and only
Gather reads it, a few rows per token. Inline in the graph, every session copies all of it
into its own memory; mapped from a file, the engine's sessions (and other processes) share the
page cache and only the pages read are resident. MiniLM, one session: 116 -> 92 MB RSS
(anonymous 101 -> 57); two sessions (engine lanes): 214 -> 185 (anonymous 200 -> 111).
"""

from __future__ import annotations

import glob
import hashlib
import math
from pathlib import Path
from typing import TYPE_CHECKING

from ember.atomic_write import write_atomically

if TYPE_CHECKING:  # onnx is imported only when a graph is written: not on a server's start
    import onnx
    from onnx import TensorProto

# Initializers at least this large that only Gather reads (as its table) go to the data file.
TABLE_MIN_BYTES = 1 << 20
# Offsets in the data file: ONNX Runtime maps a table only at an offset the platform can map
# (4 KiB pages; 64 KiB allocation granularity on Windows).
_ALIGNMENT = 1 << 16


def save_graph(graph: onnx.ModelProto, path: Path) -> None:
    """Write `graph` at `path`, its lookup tables in `<name>.<digest>.data` beside it.

    Atomic: the data file is content-named and written first, the graph renamed into place
    last, and only then are older data files removed; a crash leaves the previous graph whole.
    `graph` itself is left as it was (the int8 variant is quantised from it).
    """
    import onnx

    names = _lookup_tables(graph)
    written = graph
    data_name = None
    if names:
        written = onnx.ModelProto()
        written.CopyFrom(graph)
        tables = [t for t in written.graph.initializer if t.name in names]
        data, placed = _table_bytes(tables)
        data_name = f"{path.name}.{hashlib.sha256(data).hexdigest()[:16]}.data"
        if not (path.parent / data_name).is_file():
            write_atomically(path.parent / data_name, lambda stream: stream.write(data))
        for tensor, (offset, length) in zip(tables, placed, strict=True):
            _point_at(tensor, data_name, offset, length)
    write_atomically(path, lambda stream: stream.write(written.SerializeToString()))
    for stale in table_files(path):
        if stale.name != data_name:
            stale.unlink(missing_ok=True)


def table_files(path: Path) -> list[Path]:
    """The data files of the graph at `path` (none for graphs Ember did not build)."""
    return sorted(path.parent.glob(f"{glob.escape(path.name)}.*.data"))


def graph_files(path: Path) -> list[Path]:
    """Every file a model's weights are read from: `path` and its tables."""
    return [path, *table_files(path)]


def _lookup_tables(graph: onnx.ModelProto) -> set[str]:
    """Names of the initializers large enough to map that only Gather reads, as its table."""
    from onnx import TensorProto, helper

    from ember.engines.onnx_graphs.builder import all_graphs

    readers: dict[str, set[tuple[str, int]]] = {}
    for subgraph in all_graphs(graph.graph):
        for node in subgraph.node:
            for position, name in enumerate(node.input):
                readers.setdefault(name, set()).add((node.op_type, position))
    return {
        tensor.name
        for tensor in graph.graph.initializer
        if tensor.data_location != TensorProto.EXTERNAL
        and readers.get(tensor.name) == {("Gather", 0)}
        and math.prod(tensor.dims) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        >= TABLE_MIN_BYTES
    }


def _table_bytes(tables: list[TensorProto]) -> tuple[bytes, list[tuple[int, int]]]:
    """The data file's bytes, and each table's offset and length in it."""
    from onnx import numpy_helper

    data = bytearray()
    placed = []
    for tensor in tables:
        # little-endian, as ONNX stores it
        raw = (
            tensor.raw_data
            if tensor.HasField("raw_data")
            else numpy_helper.to_array(tensor).tobytes()
        )
        data.extend(bytes(-len(data) % _ALIGNMENT))
        placed.append((len(data), len(raw)))
        data.extend(raw)
    return bytes(data), placed


def _point_at(tensor: TensorProto, data_name: str, offset: int, length: int) -> None:
    """Make `tensor` read its values from the data file instead of holding them."""
    from onnx import TensorProto

    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
        tensor.ClearField(field)
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", data_name), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
