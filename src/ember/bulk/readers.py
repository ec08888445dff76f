"""Input readers: rows of text (and ids) streamed from txt, JSONL, CSV or Parquet files.

A row is what gets a row index, and so a place in the output:
- txt: every line, blank ones included, so output row i is always line i + 1.
- JSONL: every non-blank line (a blank line is no record).
- CSV: every record after the header (blank lines are no records, as in `csv.DictReader`);
  a record that ends before the text field, or has more fields than the header (most
  likely a comma in an unquoted text), is an error naming its lines, as a JSONL record
  without the field is.
- Parquet: every row.
A row with no text (blank line, empty or null value) keeps its place and gets no vector.
Each reader counts its rows by the same rule it reads them, so the count is exact.
Ids keep their value exactly: strings and int64 integers as they are, a bigger integer or a
JSON float as its exact text (integer ids are written as int64, and a float can lose digits),
any other value (true, an object) as its JSON text, with every number in it as written.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import orjson

from ember.bulk.errors import InputUnreadable
from ember.bulk.formats import InputFormat, require_pyarrow

RowId = str | int | None

_BLOCK = 1 << 20
_BOM = "\ufeff".encode()
_INT64 = range(-(2**63), 2**63)


@dataclass(frozen=True)
class Row:
    """One input row: its text ("" when it has none) and its id when the input has ids."""

    text: str
    id: RowId = None


class Reader(Protocol):
    """A file of rows that can be counted quickly and read from any row on."""

    @property
    def has_ids(self) -> bool: ...

    def count(self) -> int: ...

    def rows(self, skip: int = 0) -> Iterator[Row]: ...


def open_reader(path: Path, input_format: InputFormat, column: str) -> Reader:
    """The reader for `path`; checks the header or schema now, so mistakes surface early."""
    if not path.is_file():  # a pipe would give its rows to the first of a run's several reads
        raise InputUnreadable(
            f"{path} is not a regular file (a pipe or device can be read only once, and a "
            "run reads its input again to count and to resume); save it to a file first."
        )
    if input_format == "txt":
        return TextReader(path)
    if input_format == "jsonl":
        return JsonLinesReader(path, column)
    if input_format == "csv":
        return CsvReader(path, column)
    return ParquetReader(path, column)


class TextReader:
    """One text per line, UTF-8; line endings (LF or CRLF) and a leading BOM are dropped."""

    has_ids = False

    def __init__(self, path: Path) -> None:
        self.path = path

    def count(self) -> int:
        """Newlines, plus one for a last line without one: counted in blocks, not lines."""
        lines, last = 0, b"\n"
        with self.path.open("rb") as stream:
            while block := stream.read(_BLOCK):
                lines += block.count(b"\n")
                last = block[-1:]
        return lines + (last != b"\n")

    def rows(self, skip: int = 0) -> Iterator[Row]:
        with self.path.open("rb") as stream:
            for number, raw in enumerate(islice(stream, skip, None), start=skip + 1):
                text = _decoded(_without_newline(raw), self.path, number)
                yield Row(text.removeprefix("\ufeff") if number == 1 else text)


class JsonLinesReader:
    """One JSON object per line, UTF-8 (a leading BOM is dropped); the text under `column`, an
    `id` kept when the first has one."""

    def __init__(self, path: Path, column: str) -> None:
        self.path = path
        self.column = column
        first = next(self._records(), None)
        self.has_ids = first is not None and "id" in first[2]
        if first is not None and column not in first[2]:
            raise self._no_field(first[0], first[2], first_record=True)

    def count(self) -> int:
        """Records, each checked as `rows` checks its text: a record that is not JSON, lacks
        the field or holds no text there stops a run before its model loads, not when the
        rows before it have been embedded."""
        records = 0
        for index, (number, _, record) in enumerate(self._records()):
            self._text(index, number, record)
            records += 1
        return records

    def rows(self, skip: int = 0) -> Iterator[Row]:
        for index, (number, raw, record) in enumerate(islice(self._records(), skip, None), skip):
            text = self._text(index, number, record)
            yield Row(text, self._id(number, raw, record) if self.has_ids else None)

    def _text(self, index: int, number: int, record: dict[str, Any]) -> str:
        if self.column not in record:
            raise self._no_field(number, record, first_record=index == 0)
        return _text_value(record[self.column], f"{self.path.name} line {number}")

    def _no_field(self, number: int, record: dict[str, Any], first_record: bool) -> InputUnreadable:
        """Without the field in the first record, --column is likely wrong; further on, the
        column is right and this record is the mistake, so --column would mislead."""
        place = f"{self.path.name} line {number}"
        return _no_field(place, self.column, record, advise_column=first_record)

    def _id(self, number: int, raw: bytes, record: dict[str, Any]) -> RowId:
        """The id as written. orjson reads integers past 64 bits, and every float, inexactly,
        in an object or array id too; only such lines are parsed again, by the standard
        library, which keeps each number's text."""
        value = record.get("id")
        if not _has_float(value):
            return _id_value(value)
        try:
            exact = json.loads(raw, parse_float=_NumberText).get("id")
        except RecursionError as exc:  # orjson allows 1024 levels, the standard library fewer
            raise InputUnreadable(
                f"{self.path.name} line {number}: nested too deeply to read the id exactly"
            ) from exc
        return str(exact) if isinstance(exact, _NumberText) else _exact_json(exact)

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        with self.path.open("rb") as stream:
            for number, raw in enumerate(stream, start=1):
                if number == 1:  # Windows editors save UTF-8 with a BOM, which orjson refuses
                    raw = raw.removeprefix(_BOM)
                if raw.strip():
                    yield number, raw

    def _records(self) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
        for number, raw in self._lines():
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InputUnreadable(f"{self.path.name} line {number}: not JSON ({exc})") from exc
            if not isinstance(record, dict):
                raise InputUnreadable(f"{self.path.name} line {number}: not a JSON object")
            yield number, raw, record


class CsvReader:
    """A header row, then records; the text in `column`, an `id` column kept if there is one."""

    def __init__(self, path: Path, column: str) -> None:
        self.path = path
        self.column = column
        # The csv module's default field limit (128 KiB) would reject long documents;
        # the limit is process-wide, which is fine for a command-line run.
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        first = next(self._table(), None)
        if first is None:
            raise InputUnreadable(f"{path.name} is empty: a CSV input needs a header row")
        header = first[2]
        if column not in header:
            place = f"{path.name} {_lines(first[0], first[1])}"
            raise _no_field(place, column, header, advise_column=True)
        self._width = len(header)
        self._text_at = header.index(column)
        self._id_at = header.index("id") if "id" in header else None
        self.has_ids = self._id_at is not None

    def count(self) -> int:
        """Records, each checked as `rows` checks it: a bad one stops a run before its model
        loads."""
        return sum(1 for _ in self._records())

    def rows(self, skip: int = 0) -> Iterator[Row]:
        for record in islice(self._records(), skip, None):
            row_id = None
            if self._id_at is not None and self._id_at < len(record):
                row_id = record[self._id_at]  # a record may end before the id, as JSONL's may
            yield Row(record[self._text_at], row_id)

    def _open(self) -> Any:
        return self.path.open(newline="", encoding="utf-8-sig")

    def _records(self) -> Iterator[list[str]]:
        """Records after the header, blank lines skipped; InputUnreadable for one that ends
        before the text field (it would pass for an empty text) or runs past the header
        (which of its fields is the text would be a guess)."""
        for first, last, record in islice(self._table(), 1, None):
            if not record:
                continue
            if len(record) > self._width or len(record) <= self._text_at:
                raise self._misfit(first, last, len(record))
            yield record

    def _misfit(self, first: int, last: int, fields: int) -> InputUnreadable:
        lines = _lines(first, last)
        found = f"{fields} field{'s' if fields != 1 else ''} where the header has {self._width}"
        if fields > self._width:
            problem = (
                " (a comma in an unquoted text? A field holding commas, quotes or line breaks "
                "goes in double quotes)"
            )
        else:
            problem = f", so no '{self.column}' field"
        return InputUnreadable(f"{self.path.name} {lines}: {found}{problem}.")

    def _table(self) -> Iterator[tuple[int, int, list[str]]]:
        """Every record, the header first, with the lines it spans (a quoted field may hold
        line breaks, so the reader's own count says where it ends); bad quoting or bytes
        are InputUnreadable."""
        with self._open() as stream:
            reader = csv.reader(stream)
            last = 0
            try:
                for record in reader:
                    yield last + 1, reader.line_num, record
                    last = reader.line_num
            except csv.Error as exc:
                raise InputUnreadable(f"{self.path.name} line {reader.line_num}: {exc}") from exc
            except UnicodeDecodeError as exc:
                raise _not_utf8(self.path) from exc


class ParquetReader:
    """A string column of a Parquet file, read a batch at a time; `id` kept if there is one."""

    def __init__(self, path: Path, column: str, batch_rows: int = 4096) -> None:
        pyarrow, parquet = require_pyarrow()
        self.path = path
        self.column = column
        self.batch_rows = batch_rows
        try:
            with parquet.ParquetFile(path) as source:
                schema = source.schema_arrow
                self._rows = int(source.metadata.num_rows)
                self._group_rows = [
                    int(source.metadata.row_group(group).num_rows)
                    for group in range(source.num_row_groups)
                ]
        except (pyarrow.ArrowException, OSError) as exc:
            raise _not_parquet(path, exc) from exc
        if column not in schema.names:
            raise _no_field(path.name, column, schema.names, advise_column=True)
        kind = schema.field(column).type
        types = pyarrow.types
        if not (types.is_string(kind) or types.is_large_string(kind)):
            raise InputUnreadable(f"{path.name}: column '{column}' holds {kind}, not strings")
        self.has_ids = "id" in schema.names and column != "id"

    def count(self) -> int:
        return self._rows

    def rows(self, skip: int = 0) -> Iterator[Row]:
        pyarrow, _ = require_pyarrow()
        try:
            yield from self._rows_from(skip)
        except (pyarrow.ArrowException, OSError) as exc:
            raise _not_parquet(self.path, exc) from exc

    def _rows_from(self, skip: int) -> Iterator[Row]:
        _, parquet = require_pyarrow()
        first_group, skip_in_group = 0, skip
        while (
            first_group < len(self._group_rows) and skip_in_group >= self._group_rows[first_group]
        ):
            skip_in_group -= self._group_rows[first_group]
            first_group += 1
        columns = [self.column, "id"] if self.has_ids else [self.column]
        groups = list(range(first_group, len(self._group_rows)))
        if not groups:
            return
        with parquet.ParquetFile(self.path) as source:
            batches = source.iter_batches(
                batch_size=self.batch_rows, row_groups=groups, columns=columns
            )
            for batch in batches:
                texts = batch.column(0).to_pylist()
                ids = batch.column(1).to_pylist() if self.has_ids else [None] * len(texts)
                for text, row_id in zip(texts[skip_in_group:], ids[skip_in_group:], strict=True):
                    yield Row(text or "", _id_value(row_id) if self.has_ids else None)
                skip_in_group = max(0, skip_in_group - len(texts))


def _without_newline(raw: bytes) -> bytes:
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    return raw[:-1] if raw.endswith(b"\r") else raw


def _decoded(raw: bytes, path: Path, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputUnreadable(f"{path.name} line {line}: not UTF-8 ({exc.reason})") from exc


def _not_utf8(path: Path) -> InputUnreadable:
    """The error naming the first line that is not UTF-8, found by reading the bytes again:
    the text layer decodes a block at a time, so its own error names no line."""
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return InputUnreadable(f"{path.name} line {number}: not UTF-8 ({exc.reason})")
    return InputUnreadable(f"{path.name}: not UTF-8")


def _not_parquet(path: Path, exc: Exception) -> InputUnreadable:
    """Arrow reports damage (or another format) as ArrowInvalid, or OSError for bad pages."""
    return InputUnreadable(f"{path.name} is not a readable Parquet file ({exc})")


def _text_value(value: object, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputUnreadable(f"{where}: the text is {type(value).__name__}, not a string")
    return value


def _id_value(value: object) -> RowId:
    """Ids stay strings or integers (what JSON and Parquet ids usually are); others turn to
    their JSON text: `true`, not Python's `True`.

    An integer beyond int64 turns to its exact decimal text too: Parquet output holds integer
    ids as int64, so it could not keep such an id as a number.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value in _INT64:
        return value
    if isinstance(value, dict | list):
        with contextlib.suppress(TypeError):  # a Parquet struct of bytes, say: no JSON for it
            return orjson.dumps(value).decode()
    return str(value)


class _NumberText(str):
    """A JSON number's text as written: the standard library's parse_float gives it."""


def _has_float(value: object) -> bool:
    """Does orjson's reading of an id hold a float (a float, or an integer past 64 bits)?"""
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_float(item) for item in value)
    return False


def _exact_json(value: object) -> str:
    """Compact JSON text, as orjson writes it, of a value read with parse_float=_NumberText:
    every number as written."""
    if isinstance(value, _NumberText):
        return str(value)
    if isinstance(value, dict):
        items = (f"{_exact_json(key)}:{_exact_json(item)}" for key, item in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_exact_json(item) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False)  # str, int (exact), bool, None


def _no_field(
    place: str, column: str, names: Iterable[str], advise_column: bool
) -> InputUnreadable:
    """One wording for a missing text field in every format: the place (file, and line where
    it has lines) first, then the fields there are."""
    found = ", ".join(repr(name) for name in names) or "none"
    advice = "; choose the field with --column" if advise_column else ""
    return InputUnreadable(f"{place}: no '{column}' field (fields: {found}){advice}.")


def _lines(first: int, last: int) -> str:
    return f"line {first}" if first == last else f"lines {first}-{last}"
