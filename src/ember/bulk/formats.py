"""File formats a bulk run reads and writes, told from names, and the optional pyarrow import."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Literal, get_args

from ember.bulk.errors import ExtraMissing

InputFormat = Literal["txt", "jsonl", "csv", "parquet"]
OutputFormat = Literal["parquet", "npy", "jsonl"]

INPUT_FORMATS: tuple[str, ...] = get_args(InputFormat)
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)

_INPUT_SUFFIXES: dict[str, InputFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_OUTPUT_SUFFIXES: dict[str, OutputFormat] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".npy": "npy",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


def input_format_for(path: Path) -> InputFormat:
    """The input format its suffix names; anything unrecognised is plain text, a row a line."""
    return _INPUT_SUFFIXES.get(path.suffix.lower(), "txt")


def output_format_for(path: Path) -> OutputFormat | None:
    """The output format its suffix names, or None when the caller must say."""
    return _OUTPUT_SUFFIXES.get(path.suffix.lower())


def require_pyarrow() -> tuple[ModuleType, ModuleType]:
    """`(pyarrow, pyarrow.parquet)`, imported on first use: pyarrow is a large optional extra."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise ExtraMissing(
            "Parquet files need pyarrow, which is not installed. Install the extra: "
            "pip install 'ember-embeddings[parquet]'"
        ) from exc
    return pyarrow, pyarrow.parquet
