"""Output writers: vectors appended a chunk at a time, durable on `sync`, final on `finish`.

Until `finish`, output goes to partial files beside OUTPUT (`OUTPUT.ember-partial`, or the
folder `OUTPUT.ember-parts` for Parquet), so a reader never mistakes a half-done file for a
result. `sync` fsyncs what was written and returns the state a checkpoint records; reopened
with that state, a writer drops whatever a killed run wrote after it:
- JSONL truncates to the recorded byte offset;
- npy has a fixed place for every row, so later rows are simply written again;
- Parquet writes one file per chunk and deletes parts past the recorded count.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import numpy.typing as npt
import orjson

from ember.bulk.errors import CheckpointBroken, InputUnreadable
from ember.bulk.formats import OutputFormat, require_pyarrow
from ember.bulk.readers import RowId
from ember.engines.base import Vectors

WriterState = dict[str, Any]


@dataclass(frozen=True)
class EmbeddedChunk:
    """Consecutive rows from `start` on: vectors (zeros where `present` is False), ids if any."""

    start: int
    vectors: Vectors
    present: npt.NDArray[np.bool_]
    ids: Sequence[RowId] | None = None

    def __len__(self) -> int:
        return len(self.vectors)


class Writer(Protocol):
    def write(self, chunk: EmbeddedChunk) -> None: ...

    def sync(self) -> WriterState:
        """Make everything written so far durable; the state to resume from."""
        ...

    def finish(self) -> None:
        """Put the complete output in place and remove the partial files."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class OutputSpec:
    """What every writer needs to know about the output."""

    path: Path
    dimensions: int
    total_rows: int
    has_ids: bool
    metadata: dict[str, str]


def partial_file(output: Path) -> Path:
    return output.with_name(output.name + ".ember-partial")


def parts_folder(output: Path) -> Path:
    return output.with_name(output.name + ".ember-parts")


def has_partial(output: Path) -> bool:
    """Whether a run left unfinished output beside `output`."""
    return partial_file(output).exists() or parts_folder(output).exists()


def discard_partial(output: Path) -> None:
    """Remove what an earlier, abandoned run left: starting over must not append to it."""
    partial_file(output).unlink(missing_ok=True)
    _merging_file(output).unlink(missing_ok=True)
    shutil.rmtree(parts_folder(output), ignore_errors=True)
    shutil.rmtree(_trash_folder(output), ignore_errors=True)


def open_writer(output_format: OutputFormat, spec: OutputSpec, state: WriterState | None) -> Writer:
    """A writer for a fresh output (`state` None) or one resuming from a checkpoint's state."""
    if output_format == "jsonl":
        return JsonLinesWriter(spec, state)
    if output_format == "npy":
        return NpyWriter(spec, state)
    return ParquetWriter(spec, state)


class JsonLinesWriter:
    """One `{"index", "id"?, "embedding"}` object per line; `embedding` is null for empty rows."""

    def __init__(self, spec: OutputSpec, state: WriterState | None) -> None:
        self.spec = spec
        self.partial = partial_file(spec.path)
        self._stream: BinaryIO
        if state is None:
            self._stream = self.partial.open("wb")
            return
        offset = _saved_count(state, "offset", self.partial)
        size = _size_or_none(self.partial)
        if size is None or size < offset:
            raise _broken(self.partial, f"holds {size or 0} bytes, the checkpoint {offset}")
        self._stream = self.partial.open("r+b")
        self._stream.truncate(offset)
        self._stream.seek(offset)

    def write(self, chunk: EmbeddedChunk) -> None:
        option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
        for position in range(len(chunk)):
            record: dict[str, Any] = {"index": chunk.start + position}
            if self.spec.has_ids and chunk.ids is not None:
                record["id"] = chunk.ids[position]
            record["embedding"] = chunk.vectors[position] if chunk.present[position] else None
            self._stream.write(orjson.dumps(record, option=option))

    def sync(self) -> WriterState:
        self._stream.flush()
        os.fsync(self._stream.fileno())
        return {"offset": self._stream.tell()}

    def finish(self) -> None:
        self.sync()
        self._stream.close()
        os.replace(self.partial, self.spec.path)
        _sync_folder(self.spec.path.parent)

    def close(self) -> None:
        self._stream.close()


class NpyWriter:
    """A float32 [rows, dimensions] array, laid out in full at the start, filled by offset."""

    def __init__(self, spec: OutputSpec, state: WriterState | None) -> None:
        self.spec = spec
        self.partial = partial_file(spec.path)
        self._row_bytes = spec.dimensions * 4
        shape = (spec.total_rows, spec.dimensions)
        if state is None:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": "<f4", "fortran_order": False, "shape": shape}
            )
            self._data_offset = header.tell()
            self._fd = os.open(self.partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(self._fd, header.getvalue())
            os.ftruncate(self._fd, self._data_offset + spec.total_rows * self._row_bytes)
            return
        self._data_offset = self._checked_header(shape)
        self._fd = os.open(self.partial, os.O_RDWR)

    def _checked_header(self, shape: tuple[int, int]) -> int:
        try:
            with self.partial.open("rb") as stream:
                version = np.lib.format.read_magic(stream)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                found, fortran_order, dtype = read_header(stream)
                offset = stream.tell()
        except (OSError, ValueError) as exc:
            raise _broken(self.partial, str(exc)) from exc
        if tuple(found) != shape or fortran_order or dtype != np.dtype("<f4"):
            raise _broken(self.partial, f"holds {dtype} {found}, the run needs float32 {shape}")
        return int(offset)

    def write(self, chunk: EmbeddedChunk) -> None:
        data = np.ascontiguousarray(chunk.vectors, dtype="<f4").tobytes()
        position = self._data_offset + chunk.start * self._row_bytes
        while data:
            written = os.pwrite(self._fd, data, position)
            data, position = data[written:], position + written

    def sync(self) -> WriterState:
        os.fsync(self._fd)
        return {}

    def finish(self) -> None:
        self.sync()
        self.close()
        os.replace(self.partial, self.spec.path)
        _sync_folder(self.spec.path.parent)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ParquetWriter:
    """Columns `index`, `id` (if the input has ids) and `embedding` (fixed_size_list<float>).

    Parquet cannot be appended to, so each chunk becomes its own part file; `finish` streams
    the parts, one row group each, into OUTPUT. The `id` type is fixed by the first chunk:
    integers if all its ids are, else strings.
    """

    def __init__(self, spec: OutputSpec, state: WriterState | None) -> None:
        self.pyarrow, self.parquet = require_pyarrow()
        self.spec = spec
        self.folder = parts_folder(spec.path)
        self._pending: list[Path] = []
        if state is None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            self._parts, self._id_type = 0, None
            return
        self._parts = _saved_count(state, "parts", self.folder)
        self._id_type = state.get("id_type")
        missing = [number for number in range(self._parts) if not self._part(number).is_file()]
        if missing:
            raise _broken(self.folder, f"lacks part {missing[0]} of {self._parts}")
        for extra in self.folder.glob("part-*.parquet"):
            if int(extra.stem.removeprefix("part-")) >= self._parts:
                extra.unlink()

    def write(self, chunk: EmbeddedChunk) -> None:
        pyarrow = self.pyarrow
        columns = {"index": pyarrow.array(np.arange(chunk.start, chunk.start + len(chunk)))}
        if self.spec.has_ids:
            columns["id"] = self._id_column(chunk.ids or [None] * len(chunk))
        values = pyarrow.array(np.ascontiguousarray(chunk.vectors, dtype=np.float32).ravel())
        mask = None if chunk.present.all() else pyarrow.array(~chunk.present)
        columns["embedding"] = pyarrow.FixedSizeListArray.from_arrays(
            values, self.spec.dimensions, mask=mask
        )
        table = pyarrow.table(columns).replace_schema_metadata(self.spec.metadata)
        path = self._part(self._parts)
        self.parquet.write_table(table, path)
        self._pending.append(path)
        self._parts += 1

    def _id_column(self, ids: Sequence[RowId]) -> Any:
        if self._id_type is None:
            given = [row_id for row_id in ids if row_id is not None]
            numeric = bool(given) and all(isinstance(row_id, int) for row_id in given)
            self._id_type = "int64" if numeric else "string"
        if self._id_type == "int64":
            if any(isinstance(row_id, str) for row_id in ids):
                raise InputUnreadable(
                    "The ids mix integers and strings (integers past int64 are kept as text); "
                    "Parquet output needs one type per column (write JSONL instead, or make the "
                    "ids one type)."
                )
            return self.pyarrow.array(ids, type=self.pyarrow.int64())
        text = [None if row_id is None else str(row_id) for row_id in ids]
        return self.pyarrow.array(text, type=self.pyarrow.string())

    def sync(self) -> WriterState:
        for path in self._pending:
            _sync_file(path)
        self._pending.clear()
        _sync_folder(self.folder)
        return {"parts": self._parts, "id_type": self._id_type}

    def finish(self) -> None:
        self.sync()
        merging = _merging_file(self.spec.path)
        schema = self.parquet.read_schema(self._part(0)) if self._parts else self._empty_schema()
        with self.parquet.ParquetWriter(merging, schema) as merged:
            for number in range(self._parts):
                merged.write_table(self.parquet.read_table(self._part(number)))
        _sync_file(merging)
        os.replace(merging, self.spec.path)
        # Parts go in one atomic step: a run killed while deleting them must not find a
        # half-empty parts folder beside a finished output and mistake it for a broken run.
        trash = _trash_folder(self.spec.path)
        shutil.rmtree(trash, ignore_errors=True)
        self.folder.rename(trash)
        _sync_folder(self.spec.path.parent)
        shutil.rmtree(trash)

    def close(self) -> None:
        """Parts are closed as they are written."""

    def _empty_schema(self) -> Any:
        pyarrow = self.pyarrow
        fields = [pyarrow.field("index", pyarrow.int64())]
        if self.spec.has_ids:
            fields.append(pyarrow.field("id", pyarrow.string()))
        vector = pyarrow.list_(pyarrow.float32(), self.spec.dimensions)
        fields.append(pyarrow.field("embedding", vector))
        return pyarrow.schema(fields, metadata=self.spec.metadata)

    def _part(self, number: int) -> Path:
        return self.folder / f"part-{number:06d}.parquet"


def _merging_file(output: Path) -> Path:
    return output.with_name(output.name + ".ember-merging")


def _trash_folder(output: Path) -> Path:
    return output.with_name(output.name + ".ember-trash")


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _sync_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sync_folder(folder: Path) -> None:
    """Make renames and new names in `folder` durable (a no-op where folders cannot be synced)."""
    with contextlib.suppress(OSError):
        _sync_file(folder)


def _saved_count(state: WriterState, key: str, path: Path) -> int:
    """A count from the checkpoint's writer state; a damaged one is CheckpointBroken, where
    `int(state[key])` raised a KeyError or ValueError traceback."""
    value = state.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _broken(path, f"the checkpoint holds no '{key}' count")
    return value


def _broken(path: Path, detail: str) -> CheckpointBroken:
    return CheckpointBroken(
        f"The partial output {path.name} does not match its checkpoint ({detail}); "
        "start over with --restart."
    )
