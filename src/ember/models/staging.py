"""The hidden folders `ember models add` and `pull` assemble a model in, and the sweep that
removes those a killed run left behind (a pull's can hold hundreds of MB).

A staging folder's name carries the pid of the process assembling it; one whose process is
gone is abandoned. The registry never lists hidden folders, so nothing else would notice them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ember.models.settings import SETTINGS_FILE

# A pull stages the old model folder here while it swaps the new one in.
PREVIOUS = "previous"
_STAGING_NAME = re.compile(r"^\.(?:add-(?P<adder>\d+)-.*|(?P<model>.+)\.pull-(?P<puller>\d+)-.*)$")


def add_staging(models_dir: Path, folder_name: str) -> Path:
    """A new staging folder for `ember models add`, renamed into place when complete."""
    return _make(models_dir, f".add-{os.getpid()}-{folder_name[:64]}-")


def pull_staging(models_dir: Path, model_id: str) -> Path:
    """A new staging folder for `ember models pull` of `model_id`."""
    return _make(models_dir, f".{model_id}.pull-{os.getpid()}-")


def sweep_abandoned(models_dir: Path) -> list[Path]:
    """Remove the staging folders of processes that are gone; a pull killed while swapping
    folders gets its previous model folder back first. Returns the folders removed."""
    if os.name == "nt":  # no harmless liveness probe there (signal 0 is CTRL_C_EVENT)
        return []
    return _sweep(models_dir, lambda pid: not _running(pid))


def discard_own(models_dir: Path) -> list[Path]:
    """Remove this process's staging folders, as sweep_abandoned would once it is gone: for a
    command interrupted at any point, even before its own cleanup could see the folder."""
    return _sweep(models_dir, lambda pid: pid == os.getpid())


def _sweep(models_dir: Path, abandoned: Callable[[int], bool]) -> list[Path]:
    removed = []
    try:
        candidates = list(models_dir.glob(".*"))
    except OSError:  # unreadable: then nothing could be staged there either
        return []
    for folder in candidates:
        match = _STAGING_NAME.match(folder.name)
        if match is None or folder.is_symlink() or not folder.is_dir():
            continue
        if not abandoned(int(match["adder"] or match["puller"])):
            continue
        previous, target = folder / PREVIOUS, models_dir / (match["model"] or "")
        if match["model"] and (previous / SETTINGS_FILE).is_file() and not os.path.lexists(target):
            os.replace(previous, target)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _make(models_dir: Path, prefix: str) -> Path:
    models_dir.mkdir(parents=True, exist_ok=True)
    sweep_abandoned(models_dir)
    staging = Path(tempfile.mkdtemp(dir=models_dir, prefix=prefix))
    os.chmod(staging, 0o755)  # mkdtemp makes it private; model folders are not secret
    return staging


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or no such pid to ask about: leave it
    return True
