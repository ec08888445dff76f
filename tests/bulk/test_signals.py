"""`ember embed` stopped by Ctrl-C or a service manager's SIGTERM: one line, then a resume that
writes the very bytes of an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ember.bulk.checkpoint import checkpoint_path, read_checkpoint
from tests.support.models import WORDS, write_fake_model

SLOW_MODEL = "fake-slow"
ROWS = 400


def ember(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "ember", *(str(arg) for arg in args)]


@pytest.mark.parametrize(
    ("stop", "output_format"),
    [
        (signal.SIGINT, "jsonl"),
        (signal.SIGTERM, "jsonl"),
        (signal.SIGTERM, "npy"),
        (signal.SIGTERM, "parquet"),
    ],
    ids=["SIGINT-jsonl", "SIGTERM-jsonl", "SIGTERM-npy", "SIGTERM-parquet"],
)
def test_a_stopped_run_says_so_and_resumes_to_the_same_bytes(
    tmp_path: Path, output_format: str, stop: signal.Signals
) -> None:
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, SLOW_MODEL, fake={"delay_seconds": 0.02})
    source = tmp_path / "input.txt"
    source.write_text("".join(f"{WORDS[row % len(WORDS)]} {row}\n" for row in range(ROWS)))
    reference, output = tmp_path / f"ref.{output_format}", tmp_path / f"out.{output_format}"

    def command(path: Path) -> list[str]:
        return ember("embed", source, "-m", SLOW_MODEL, "-o", path, "--models-dir", models_dir,
                     "--chunk-rows", "10")  # fmt: skip

    subprocess.run(command(reference), check=True, capture_output=True, timeout=120)
    process = subprocess.Popen(command(output), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while (saved := read_checkpoint(checkpoint_path(output))) is None or saved.rows_done < 50:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no progress within 60 s"
        time.sleep(0.005)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 128 + stop, stderr
    saved = read_checkpoint(checkpoint_path(output))
    assert saved is not None
    assert 50 <= saved.rows_done < ROWS
    assert stderr.decode().strip().splitlines()[-1] == (
        f"Interrupted: {saved.rows_done} rows are saved; run the same command to resume."
    )
    resumed = subprocess.run(command(output), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after row {saved.rows_done:,}" in resumed.stdout
    assert output.read_bytes() == reference.read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["input.txt", "models", reference.name, output.name]
    )


def test_a_second_run_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, SLOW_MODEL, fake={"delay_seconds": 0.02})
    source = tmp_path / "input.txt"
    source.write_text("".join(f"{WORDS[row % len(WORDS)]} {row}\n" for row in range(ROWS)))
    reference, output = tmp_path / "ref.npy", tmp_path / "out.npy"

    def command(path: Path) -> list[str]:
        return ember("embed", source, "-m", SLOW_MODEL, "-o", path, "--models-dir", models_dir,
                     "--chunk-rows", "10")  # fmt: skip

    subprocess.run(command(reference), check=True, capture_output=True, timeout=120)
    first = subprocess.Popen(command(output), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while (saved := read_checkpoint(checkpoint_path(output))) is None or saved.rows_done < 50:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "no progress within 60 s"
        time.sleep(0.005)
    second = subprocess.run(command(output), capture_output=True, text=True, timeout=60)
    assert second.returncode == 1
    assert "Another ember embed is already writing" in second.stderr
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    assert (tmp_path / "out.npy.ember-lock").exists()  # the dead run's, left behind

    resumed = subprocess.run(command(output), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert output.read_bytes() == reference.read_bytes()
    assert not (tmp_path / "out.npy.ember-lock").exists()
