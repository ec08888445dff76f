"""Writers: a reopened writer drops what a killed run wrote past its last sync, in every format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ember.bulk.errors import CheckpointBroken
from ember.bulk.formats import OutputFormat
from ember.bulk.writers import (
    EmbeddedChunk,
    OutputSpec,
    has_partial,
    open_writer,
    partial_file,
    parts_folder,
)

DIMENSIONS = 4
ROWS = 10


def chunk(start: int, stop: int, *, poison: bool = False) -> EmbeddedChunk:
    """Rows [start, stop); row 5 has no text. `poison` writes wrong vectors, as a crash might."""
    values = np.arange(start, stop, dtype=np.float32)[:, None] + np.arange(DIMENSIONS) / 10
    vectors = (-values if poison else values).astype(np.float32)
    present = np.array([row != 5 for row in range(start, stop)])
    vectors[~present] = 0
    return EmbeddedChunk(start, vectors, present, [f"id-{row}" for row in range(start, stop)])


def spec(tmp_path: Path, output_format: OutputFormat) -> OutputSpec:
    return OutputSpec(
        tmp_path / f"out.{output_format}", DIMENSIONS, ROWS, True, {"ember.model": "test"}
    )


def read_output(path: Path, output_format: OutputFormat) -> tuple[list[int], np.ndarray]:
    """Row indices and vectors (NaN rows where there is no vector)."""
    if output_format == "npy":
        vectors = np.load(path)
        return list(range(len(vectors))), vectors
    if output_format == "jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert all(record["id"] == f"id-{record['index']}" for record in records)
        embeddings = [record["embedding"] or [np.nan] * DIMENSIONS for record in records]
        return [record["index"] for record in records], np.array(embeddings, dtype=np.float32)
    table = pq.read_table(path)
    assert table.schema.field("embedding").type.list_size == DIMENSIONS
    assert table.schema.metadata[b"ember.model"] == b"test"
    assert table.column("id").to_pylist() == [f"id-{row}" for row in range(ROWS)]
    embeddings = [row or [np.nan] * DIMENSIONS for row in table.column("embedding").to_pylist()]
    return table.column("index").to_pylist(), np.array(embeddings, dtype=np.float32)


def expected_vectors(output_format: OutputFormat) -> np.ndarray:
    whole = chunk(0, ROWS)
    vectors = whole.vectors.copy()
    if output_format != "npy":
        vectors[~whole.present] = np.nan
    return vectors


@pytest.mark.parametrize("output_format", ["jsonl", "npy", "parquet"])
def test_resumed_writer_keeps_each_row_exactly_once(
    tmp_path: Path, output_format: OutputFormat
) -> None:
    output = spec(tmp_path, output_format)
    writer = open_writer(output_format, output, None)
    writer.write(chunk(0, 4))
    state = writer.sync()
    writer.write(chunk(4, 8, poison=True))  # written, maybe synced, but never checkpointed
    writer.sync()
    writer.close()
    if output_format == "jsonl":
        with partial_file(output.path).open("ab") as stream:
            stream.write(b'{"index": 8, "embedd')  # a line cut off by the kill

    resumed = open_writer(output_format, output, state)
    resumed.write(chunk(4, 8))
    resumed.write(chunk(8, ROWS))
    resumed.sync()
    resumed.finish()

    assert not has_partial(output.path)
    indices, vectors = read_output(output.path, output_format)
    assert indices == list(range(ROWS))
    np.testing.assert_array_equal(vectors, expected_vectors(output_format))


def test_npy_output_is_laid_out_before_any_row_is_written(tmp_path: Path) -> None:
    output = spec(tmp_path, "npy")
    writer = open_writer("npy", output, None)
    writer.sync()
    writer.close()
    partial = np.load(partial_file(output.path))
    assert partial.shape == (ROWS, DIMENSIONS)
    assert partial.dtype == np.float32


def test_jsonl_shorter_than_its_checkpoint_is_refused(tmp_path: Path) -> None:
    output = spec(tmp_path, "jsonl")
    writer = open_writer("jsonl", output, None)
    writer.write(chunk(0, 4))
    state = writer.sync()
    writer.close()
    partial_file(output.path).write_bytes(b"")
    with pytest.raises(CheckpointBroken, match="--restart"):
        open_writer("jsonl", output, state)


def test_parquet_missing_part_is_refused(tmp_path: Path) -> None:
    output = spec(tmp_path, "parquet")
    writer = open_writer("parquet", output, None)
    writer.write(chunk(0, 4))
    state = writer.sync()
    for part in parts_folder(output.path).iterdir():
        part.unlink()
    with pytest.raises(CheckpointBroken, match="lacks part 0"):
        open_writer("parquet", output, state)


def test_parquet_integer_ids_stay_integers(tmp_path: Path) -> None:
    output = spec(tmp_path, "parquet")
    writer = open_writer("parquet", output, None)
    whole = chunk(0, ROWS)
    writer.write(EmbeddedChunk(0, whole.vectors, whole.present, list(range(100, 110))))
    writer.finish()
    table = pq.read_table(output.path)
    assert str(table.schema.field("id").type) == "int64"
    assert table.column("id").to_pylist() == list(range(100, 110))
