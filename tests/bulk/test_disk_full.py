"""A full disk mid-run: one error line, the last checkpoint intact, and a resume to the very
bytes of a run that never hit it. The mock only injects the fault, after the real write."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from ember.bulk import writers
from ember.bulk.checkpoint import checkpoint_path, read_checkpoint
from ember.bulk.writers import EmbeddedChunk
from tests.bulk.conftest import FAKE_MODEL, Invoke
from tests.support.models import WORDS

WRITERS = {
    "jsonl": writers.JsonLinesWriter,
    "npy": writers.NpyWriter,
    "parquet": writers.ParquetWriter,
}


@pytest.mark.parametrize("output_format", list(WRITERS))
def test_a_full_disk_keeps_the_checkpoint_resumable(
    tmp_path: Path,
    fake_models_dir: Path,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
    output_format: str,
) -> None:
    source = tmp_path / "input.txt"
    source.write_text("".join(f"{WORDS[row % len(WORDS)]} {row}\n" for row in range(50)))
    reference, output = tmp_path / f"ref.{output_format}", tmp_path / f"out.{output_format}"

    def command(path: Path) -> list[str | Path]:
        return ["embed", source, "-m", FAKE_MODEL, "-o", path, "--models-dir", fake_models_dir,
                "--chunk-rows", "10"]  # fmt: skip

    assert invoke(*command(reference)).exit_code == 0
    writer = WRITERS[output_format]
    real_write = writer.write

    def write_then_fill_the_disk(self: object, chunk: EmbeddedChunk) -> None:
        real_write(self, chunk)  # type: ignore[arg-type]
        if chunk.start == 20:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "write", write_then_fill_the_disk)
    failed = invoke(*command(output))
    assert isinstance(failed.exception, SystemExit), failed.exception
    assert failed.exit_code == 1
    assert failed.output == (
        f"Error: cannot write {output}: no space left on the disk (20 rows are saved; run the "
        "same command to resume)\n"
    )
    saved = read_checkpoint(checkpoint_path(output))
    assert saved is not None
    assert saved.rows_done == 20
    assert not output.exists()

    monkeypatch.setattr(writer, "write", real_write)
    resumed = invoke(*command(output))
    assert resumed.exit_code == 0, resumed.output
    assert "resumed after row 20" in resumed.output
    assert output.read_bytes() == reference.read_bytes()


def test_a_full_disk_while_merging_parquet_parts_resumes_to_the_same_bytes(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "input.txt"
    source.write_text("".join(f"{WORDS[row % len(WORDS)]} {row}\n" for row in range(50)))
    reference, output = tmp_path / "ref.parquet", tmp_path / "out.parquet"

    def command(path: Path) -> list[str | Path]:
        return ["embed", source, "-m", FAKE_MODEL, "-o", path, "--models-dir", fake_models_dir,
                "--chunk-rows", "10"]  # fmt: skip

    assert invoke(*command(reference)).exit_code == 0
    real_sync = writers._sync_file

    def sync_but_not_the_merged_file(path: Path) -> None:
        real_sync(path)
        if path.name.endswith(".ember-merging"):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writers, "_sync_file", sync_but_not_the_merged_file)
    failed = invoke(*command(output))
    assert failed.exit_code == 1
    assert "no space left on the disk (50 rows are saved; run the same command" in failed.output
    assert not output.exists()

    monkeypatch.setattr(writers, "_sync_file", real_sync)
    resumed = invoke(*command(output))
    assert resumed.exit_code == 0, resumed.output
    assert output.read_bytes() == reference.read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["input.txt", "models", reference.name, output.name]
    )
