"""The files of a graph Ember builds: the ONNX graph, and its lookup tables beside it as
external data, which ONNX Runtime memory-maps instead of copying.

A token-embedding table is half of a small encoder's weights (MiniLM: 47 of 90 MB) and only
Gather reads it, a few rows per token. Inline in the graph, every session copies all of it
into its own memory; mapped from a file, the engine's sessions (and other processes) share the
page cache and only the pages read are resident. MiniLM, one session: 116 -> 92 MB RSS
(anonymous 101 -> 57); two sessions (engine lanes): 214 -> 185 (anonymous 200 -> 111).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

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
    `graph` itself is left as it was.
    """
    import onnx

    tables = _lookup_tables(graph)
    data, placed = _table_bytes(tables)
    data_name = f"{path.name}.{hashlib.sha256(data).hexdigest()[:16]}.data" if tables else None
    if data_name is not None and not (path.parent / data_name).is_file():
        _write_atomically(path.parent / data_name, lambda temp: temp.write_bytes(data))
    with _external(tables, placed, data_name):
        _write_atomically(path, lambda temp: onnx.save_model(graph, str(temp)))
    for stale in table_files(path):
        if stale.name != data_name:
            stale.unlink(missing_ok=True)


def table_files(path: Path) -> list[Path]:
    """The data files of the graph at `path` (none for graphs Ember did not build)."""
    return sorted(path.parent.glob(f"{glob.escape(path.name)}.*.data"))


def graph_files(path: Path) -> list[Path]:
    """Every file a model's weights are read from: `path` and its tables."""
    return [path, *table_files(path)]


def _lookup_tables(graph: onnx.ModelProto) -> list[TensorProto]:
    from onnx import TensorProto

    from ember.engines.onnx_graphs.builder import all_graphs

    readers: dict[str, set[tuple[str, int]]] = {}
    for subgraph in all_graphs(graph.graph):
        for node in subgraph.node:
            for position, name in enumerate(node.input):
                readers.setdefault(name, set()).add((node.op_type, position))
    return [
        tensor
        for tensor in graph.graph.initializer
        if tensor.data_location != TensorProto.EXTERNAL
        and readers.get(tensor.name) == {("Gather", 0)}
        and _byte_size(tensor) >= TABLE_MIN_BYTES
    ]


def _byte_size(tensor: TensorProto) -> int:
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    return len(_raw(tensor))


def _table_bytes(tables: list[TensorProto]) -> tuple[bytes, list[tuple[int, int]]]:
    """The data file's bytes, and each table's offset and length in it."""
    data = bytearray()
    placed = []
    for tensor in tables:
        raw = tensor.raw_data if tensor.HasField("raw_data") else _raw(tensor)
        data.extend(bytes(-len(data) % _ALIGNMENT))
        placed.append((len(data), len(raw)))
        data.extend(raw)
    return bytes(data), placed


def _raw(tensor: TensorProto) -> bytes:
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor).tobytes()  # little-endian, as ONNX stores it


@contextlib.contextmanager
def _external(
    tables: list[TensorProto], placed: list[tuple[int, int]], data_name: str | None
) -> Iterator[None]:
    """The tables pointed at the data file while the graph is saved, inline again after."""
    import onnx
    from onnx import TensorProto

    kept = [onnx.TensorProto() for _ in tables]
    for tensor, copy in zip(tables, kept, strict=True):
        copy.CopyFrom(tensor)
    try:
        for tensor, (offset, length) in zip(tables, placed, strict=True):
            assert data_name is not None
            tensor.ClearField("raw_data")
            for field in ("float_data", "int32_data", "int64_data", "double_data"):
                tensor.ClearField(field)
            tensor.data_location = TensorProto.EXTERNAL
            del tensor.external_data[:]
            for key, value in (("location", data_name), ("offset", offset), ("length", length)):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(value)
        yield
    finally:
        for tensor, copy in zip(tables, kept, strict=True):
            tensor.CopyFrom(copy)


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    try:
        write(temp)
        temp.replace(path)
    finally:
        temp.unlink(missing_ok=True)
