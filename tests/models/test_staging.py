"""Staging folders left by killed runs of older Embers, whose names carry no pid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.gguf_files import convert_folder, write_tiny_bert_folder
from tests.support.models import write_fake_model

TWO_DAYS = 2 * 24 * 3600


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sources")
    bert = write_tiny_bert_folder(folder / "tiny-bert", seed=9)
    return convert_folder(bert.path, folder / "tiny-bert.gguf")


@pytest.fixture(autouse=True)
def _no_stray_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("EMBER_")]:
        monkeypatch.delenv(name)


def age(folder: Path, seconds: float) -> None:
    """Date the folder and everything in it `seconds` back, as if left that long ago."""
    then = time.time() - seconds
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (then, then), follow_symlinks=False)


def add(gguf: Path, models_dir: Path) -> None:
    command = ["models", "add", str(gguf), "--models-dir", str(models_dir)]
    added = subprocess.run(
        [sys.executable, "-m", "ember", *command], capture_output=True, text=True, timeout=120
    )
    assert added.returncode == 0, added.stderr


def test_old_pre_pid_staging_folders_are_swept(gguf: Path, tmp_path: Path) -> None:
    # Named before names carried a pid, they were never recognised, so never removed.
    models_dir = tmp_path / "models"
    old_add = models_dir / ".add-tiny-bert-k3j9x0_a"
    old_pull = models_dir / ".all-MiniLM-L6-v2.pull-ab12cd34"
    (old_add / "1_Pooling").mkdir(parents=True)
    (old_add / "model.safetensors").write_bytes(b"\0" * 4096)
    write_fake_model(old_pull, "previous")  # a pull killed between its two renames
    (old_pull / "wheels").mkdir()
    age(old_add, TWO_DAYS)
    age(old_pull, TWO_DAYS)

    add(gguf, models_dir)

    assert sorted(path.name for path in models_dir.iterdir()) == ["all-MiniLM-L6-v2", "tiny-bert"]
    restored = json.loads((models_dir / "all-MiniLM-L6-v2" / "model.json").read_text("utf-8"))
    assert restored["id"] == "previous"


def test_pre_pid_folders_that_may_be_in_use_are_kept(gguf: Path, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        recent = models_dir / ".add-recent-abcdefgh"  # an older Ember may be adding it now
        written_lately = models_dir / ".nomic.pull-zz99yy88"  # old, but a file just changed
        live_pid = models_dir / f".add-{running.pid}-x-qwertyui"  # also reads as a live pid's
        users_own = models_dir / ".add-notes"  # not a name Ember made
        for folder in (recent, written_lately / "wheels", live_pid, users_own):
            folder.mkdir(parents=True)
        age(written_lately, TWO_DAYS)
        (written_lately / "wheels" / "part.whl").write_bytes(b"PK")
        age(live_pid, TWO_DAYS)
        age(users_own, TWO_DAYS)
        linked = models_dir / ".add-linked-abcdefgh"
        linked.symlink_to(tmp_path, target_is_directory=True)

        add(gguf, models_dir)

        for folder in (recent, written_lately, live_pid, users_own, linked):
            assert os.path.lexists(folder), folder
        assert (tmp_path / "models" / "tiny-bert").is_dir()
    finally:
        running.kill()
        running.wait()
