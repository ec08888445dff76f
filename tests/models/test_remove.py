"""`ember models rm`: the model is gone at once, even if the command dies while deleting."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.gguf_files import convert_folder, write_tiny_bert_folder
from tests.support.models import write_fake_model
from tests.support.process import run_ember

# `ember models rm`, paused (after writing a marker) when it starts deleting files.
PAUSED_RM = """
import shutil, sys, time
from pathlib import Path

marker = Path(sys.argv[1])

def paused(*args, **kwargs):
    marker.write_text("deleting", encoding="utf-8")
    time.sleep(300)

shutil.rmtree = paused
from ember.cli import main
sys.argv = ["ember", *sys.argv[2:]]
main()
"""


pytestmark = pytest.mark.usefixtures("no_ember_environment")


def test_an_rm_killed_while_deleting_leaves_no_half_model(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, "doomed")
    write_fake_model(models_dir, "kept")
    marker = tmp_path / "paused"
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSED_RM, str(marker),
         "models", "rm", "doomed", "--models-dir", str(models_dir)],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert process.poll() is None, "rm ended before deleting"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    listed = run_ember("models", "list", "--models-dir", str(models_dir))
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["kept"]
    # What it left is hidden, and the next add sweeps it.
    gguf = convert_folder(
        write_tiny_bert_folder(tmp_path / "tiny-bert", seed=19).path, tmp_path / "tiny.gguf"
    )
    assert run_ember("models", "add", str(gguf), "--models-dir", str(models_dir)).returncode == 0
    assert sorted(path.name for path in models_dir.iterdir()) == ["kept", "tiny"]


def test_removing_twice_says_the_model_is_gone(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, "once")
    first = run_ember("models", "rm", "once", "--models-dir", str(models_dir))
    assert (first.returncode, first.stdout) == (0, "removed once\n")
    second = run_ember("models", "rm", "once", "--models-dir", str(models_dir))
    assert second.returncode == 1
    assert second.stderr.startswith("Error: The model 'once' does not exist.")
    assert list(models_dir.iterdir()) == []
