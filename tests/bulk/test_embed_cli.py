"""`ember embed` on the real default model: every input and output format, and its refusals."""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ember.bulk.formats import InputFormat, OutputFormat
from ember.engines.base import TokenBatch
from ember.models.loader import load_model
from ember.models.registry import ModelRegistry
from tests.bulk.conftest import FAKE_MODEL, Invoke

MODEL = "all-MiniLM-L6-v2"
LONG = "embedding " * 400  # well past the model's 256 tokens
TEXTS = ["The quick brown fox.", "", "Ember serves embeddings locally.", LONG, "naïve café"]
IDS = [11, 12, 13, 14, 15]


@pytest.fixture(scope="module")
def reference(default_models_dir: Path) -> np.ndarray:
    """Each text embedded on its own, truncated as the server does; zeros where there is none."""
    entry = ModelRegistry(default_models_dir).find(MODEL)
    assert entry.settings is not None
    model = load_model(entry.folder, entry.settings)
    vectors = np.zeros((len(TEXTS), 384), dtype=np.float32)
    for row, text in enumerate(TEXTS):
        if text:
            (ids,) = model.tokenizer.encode([text])
            vectors[row] = model.engine.embed(TokenBatch([model.tokenizer.truncate_ids(ids)]))[0]
    model.engine.close()
    return vectors


def write_input(folder: Path, input_format: InputFormat) -> Path:
    path = folder / f"input.{input_format}"
    if input_format == "txt":
        path.write_text("\n".join(TEXTS) + "\n")
    elif input_format == "jsonl":
        records = [{"id": row_id, "text": text} for row_id, text in zip(IDS, TEXTS, strict=True)]
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    elif input_format == "csv":
        with path.open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["id", "text"])
            writer.writerows(zip(IDS, TEXTS, strict=True))
    else:
        pq.write_table(pa.table({"id": IDS, "text": TEXTS}), path)
    return path


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_vectors(found: np.ndarray, expected: np.ndarray) -> None:
    assert found.shape == expected.shape
    present = np.linalg.norm(expected, axis=1) > 0
    assert not np.any(found[~present])
    cosines = np.sum(found[present] * expected[present], axis=1)
    assert cosines.min() >= 0.9999


@pytest.mark.parametrize("input_format", ["txt", "jsonl", "csv", "parquet"])
def test_every_input_format_gives_the_reference_vectors(
    tmp_path: Path,
    default_models_dir: Path,
    invoke: Invoke,
    reference: np.ndarray,
    input_format: InputFormat,
) -> None:
    source = write_input(tmp_path, input_format)
    output = tmp_path / "vectors.jsonl"
    result = invoke("embed", source, "-m", MODEL, "-o", output, "--models-dir", default_models_dir)
    assert result.exit_code == 0, result.output
    assert "Embedded 5 rows" in result.stdout
    assert "1 truncated, 1 empty (no vector)" in result.stdout

    records = read_jsonl(output)
    assert [record["index"] for record in records] == list(range(len(TEXTS)))
    if input_format == "txt":
        assert all("id" not in record for record in records)
    else:
        expected_ids = [str(row_id) for row_id in IDS] if input_format == "csv" else IDS
        assert [record["id"] for record in records] == expected_ids
    assert records[1]["embedding"] is None
    found = [record["embedding"] or [0.0] * 384 for record in records]
    assert_same_vectors(np.array(found, dtype=np.float32), reference)


@pytest.mark.parametrize("output_format", ["parquet", "npy", "jsonl"])
def test_every_output_format_holds_the_reference_vectors(
    tmp_path: Path,
    default_models_dir: Path,
    invoke: Invoke,
    reference: np.ndarray,
    output_format: OutputFormat,
) -> None:
    source = write_input(tmp_path, "jsonl")
    output = tmp_path / f"vectors.{output_format}"
    result = invoke("embed", source, "-m", MODEL, "-o", output, "--models-dir", default_models_dir)
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([source.name, output.name])

    if output_format == "npy":
        vectors = np.load(output)
        assert vectors.dtype == np.float32
    elif output_format == "parquet":
        table = pq.read_table(output)
        assert table.column_names == ["index", "id", "embedding"]
        vector_type = table.schema.field("embedding").type
        assert pa.types.is_fixed_size_list(vector_type)
        assert (vector_type.list_size, vector_type.value_type) == (384, pa.float32())
        assert table.column("id").to_pylist() == IDS
        assert table.column("embedding").null_count == 1
        rows = table.column("embedding").to_pylist()
        vectors = np.array([row or [0.0] * 384 for row in rows], dtype=np.float32)
    else:
        rows = [record["embedding"] or [0.0] * 384 for record in read_jsonl(output)]
        vectors = np.array(rows, dtype=np.float32)
    assert_same_vectors(vectors, reference)


def test_no_truncate_stops_at_the_first_long_row(
    tmp_path: Path, default_models_dir: Path, invoke: Invoke
) -> None:
    source = write_input(tmp_path, "txt")
    output = tmp_path / "vectors.npy"
    result = invoke(
        "embed", source, "-m", MODEL, "-o", output, "--no-truncate", "--models-dir",
        default_models_dir,
    )  # fmt: skip
    assert result.exit_code == 1
    assert re.search(r"Row 3 has \d+ tokens; the model takes at most 256", result.output)


def test_dimensions_are_refused_for_a_model_that_cannot_shorten(
    tmp_path: Path, default_models_dir: Path, invoke: Invoke
) -> None:
    source = write_input(tmp_path, "txt")
    result = invoke(
        "embed", source, "-m", MODEL, "-o", tmp_path / "v.npy", "--dimensions", "128",
        "--models-dir", default_models_dir,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "cannot shorten them" in result.output


def test_dimensions_shorten_and_renormalise(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke
) -> None:
    source = tmp_path / "input.txt"
    source.write_text("hello world\nthe lazy dog\n")
    full, short = tmp_path / "full.npy", tmp_path / "short.npy"
    for output, extra in ((full, []), (short, ["--dimensions", "4"])):
        result = invoke(
            "embed", source, "-m", FAKE_MODEL, "-o", output, "--models-dir", fake_models_dir,
            *extra,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    expected = np.load(full)[:, :4]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(np.load(short), expected, rtol=1e-6)


def test_unknown_model_and_unknown_output_suffix_are_explained(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke
) -> None:
    source = tmp_path / "input.txt"
    source.write_text("hello\n")
    unknown = invoke("embed", source, "-m", "nope", "-o", tmp_path / "v.npy",
                     "--models-dir", fake_models_dir)  # fmt: skip
    assert unknown.exit_code == 1
    assert "The model 'nope' does not exist" in unknown.output
    suffix = invoke("embed", source, "-m", FAKE_MODEL, "-o", tmp_path / "v.bin",
                    "--models-dir", fake_models_dir)  # fmt: skip
    assert suffix.exit_code == 2
    assert "pass --output-format" in suffix.output


def test_parquet_without_pyarrow_names_the_extra(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    source = tmp_path / "input.txt"
    source.write_text("hello\n")
    output = tmp_path / "v.parquet"
    result = invoke("embed", source, "-m", FAKE_MODEL, "-o", output, "--models-dir",
                    fake_models_dir)  # fmt: skip
    assert result.exit_code == 1
    assert "pip install 'ember-embeddings[parquet]'" in result.output
    assert not list(tmp_path.glob("v.parquet*"))


def test_changed_input_refuses_to_resume_with_a_clear_message(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke
) -> None:
    source = tmp_path / "input.txt"
    source.write_text("".join(f"hello world {row}\n" for row in range(30)))
    output = tmp_path / "v.jsonl"
    checkpoint = tmp_path / "v.jsonl.ember-checkpoint.json"
    args = ["embed", source, "-m", FAKE_MODEL, "-o", output, "--models-dir", fake_models_dir]
    first = invoke(*args, "--chunk-rows", "10")
    assert first.exit_code == 0, first.output
    # Leave a checkpoint as an interrupted run would: 10 of 30 rows done.
    state = {"version": 1, "identity": {}, "total_rows": 30, "rows_done": 10}
    checkpoint.write_text(json.dumps(state))
    refused = invoke(*args)
    assert refused.exit_code == 1
    assert "was written by a different run, so it cannot be resumed" in refused.output
    assert "Pass --restart to start over (discarding the 10 rows done)" in refused.output
    restarted = invoke(*args, "--restart")
    assert restarted.exit_code == 0, restarted.output
    assert not checkpoint.exists()
    assert len(output.read_text().splitlines()) == 30


def embedded_ids(source: Path, output: Path, models_dir: Path, invoke: Invoke) -> list[object]:
    """Embed `source` into `output` with the fake model; the ids the output holds, in order."""
    result = invoke("embed", source, "-m", FAKE_MODEL, "-o", output, "--models-dir", models_dir)
    assert result.exit_code == 0, result.output
    if output.suffix == ".jsonl":
        return [record["id"] for record in read_jsonl(output)]
    return list(pq.read_table(output).column("id").to_pylist())


@pytest.mark.parametrize("output_format", ["jsonl", "parquet"])
def test_ids_past_int64_come_out_digit_for_digit(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke, output_format: OutputFormat
) -> None:
    source = tmp_path / "input.jsonl"
    source.write_text(
        '{"text": "a", "id": 99999999999999999999}\n{"text": "b", "id": 18446744073709551615}\n'
    )
    ids = embedded_ids(source, tmp_path / f"v.{output_format}", fake_models_dir, invoke)
    assert ids == ["99999999999999999999", "18446744073709551615"]


@pytest.mark.parametrize("output_format", ["jsonl", "parquet"])
@pytest.mark.parametrize("input_format", ["jsonl", "parquet"])
def test_boolean_and_object_ids_come_out_as_their_json_text(
    tmp_path: Path,
    fake_models_dir: Path,
    invoke: Invoke,
    input_format: InputFormat,
    output_format: OutputFormat,
) -> None:
    source = tmp_path / f"input.{input_format}"
    if input_format == "jsonl":
        source.write_text(
            '{"text": "a", "id": true}\n{"text": "b", "id": false}\n'
            '{"text": "c", "id": {"k": [1, null]}}\n'
        )
        expected = ["true", "false", '{"k":[1,null]}']
    else:
        pq.write_table(pa.table({"id": [True, False, None], "text": ["a", "b", "c"]}), source)
        expected = ["true", "false", None]
    ids = embedded_ids(source, tmp_path / f"v.{output_format}", fake_models_dir, invoke)
    assert ids == expected


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("input.csv", b"id,text\n1,\xff\xfe\n", "input.csv line 2: not UTF-8"),
        ("input.csv", b"id,te\xffxt\n1,a\n", "input.csv line 1: not UTF-8"),
        ("input.txt", b"fine\nbad \xff byte\n", "input.txt line 2: not UTF-8"),
        ("input.parquet", b"PAR1garbage", "input.parquet is not a readable Parquet file"),
    ],
    ids=["csv-record", "csv-header", "txt", "parquet"],
)
def test_unreadable_input_is_an_error_line_not_a_traceback(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke, name: str, content: bytes, message: str
) -> None:
    source = tmp_path / name
    source.write_bytes(content)
    result = invoke("embed", source, "-m", FAKE_MODEL, "-o", tmp_path / "v.jsonl",
                    "--models-dir", fake_models_dir)  # fmt: skip
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert f"Error: {message}" in result.output


@pytest.mark.skipif(sys.platform == "win32", reason="named pipes are a POSIX file type here")
def test_a_pipe_as_input_is_refused_not_embedded_as_zero_rows(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke
) -> None:
    # `ember embed <(cat docs.txt)` hands over a pipe: a run reads its input more than once
    # (identity, count, rows), and a pipe gives its rows to the first read only.
    source = tmp_path / "rows.txt"
    os.mkfifo(source)
    output = tmp_path / "v.jsonl"
    result = invoke("embed", source, "-m", FAKE_MODEL, "-o", output,
                    "--models-dir", fake_models_dir)  # fmt: skip
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert f"Error: {source} is not a regular file" in result.output
    assert not output.exists()
