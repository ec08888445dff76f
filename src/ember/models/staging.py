"""The hidden folders `ember models add` and `pull` assemble a model in (and `rm` deletes one
from), and the sweep that removes those a killed run left behind (a pull's can hold hundreds
of MB).

A staging folder's name carries the pid of the process assembling it; one whose process is
gone is abandoned. Versions before that named them `.add-<folder>-<8 random characters>` and
`.<id>.pull-<8 random characters>`: with no pid to ask about, such a folder is abandoned once
nothing in it has changed for PRE_PID_IDLE_SECONDS. The registry never lists hidden folders,
so nothing else would notice them.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ember.models.settings import SETTINGS_FILE

# A pull stages the old model folder here while it swaps the new one in.
PREVIOUS = "previous"
_STAGING_NAME = re.compile(
    r"^\.(?:(?:add|rm)-(?P<adder>\d+)-.*|(?P<model>.+)\.pull-(?P<puller>\d+)-.*)$"
)
# Before names carried a pid: the prefix, then mkdtemp's 8 random characters. An old add of a
# folder named `123-x` also reads as pid 123's: kept while such a process lives, never lost.
_PRE_PID_NAME = re.compile(r"^\.(?:add-.+-|(?P<model>.+)\.pull-)[a-z0-9_]{8}$")
# A day: an older Ember still running beside this one may leave its folder untouched for a
# long while (pip downloads a wheel elsewhere, a graph builds in memory); a day is far more.
PRE_PID_IDLE_SECONDS = 24 * 3600.0


def add_staging(models_dir: Path, folder_name: str) -> Path:
    """A new staging folder for `ember models add`, renamed into place when complete."""
    return _make(models_dir, f".add-{os.getpid()}-{folder_name[:64]}-")


def pull_staging(models_dir: Path, model_id: str) -> Path:
    """A new staging folder for `ember models pull` of `model_id`."""
    return _make(models_dir, f".{model_id}.pull-{os.getpid()}-")


def removal_path(models_dir: Path, folder_name: str) -> Path:
    """A hidden name to rename a model folder to before deleting it: the removal is then
    whole at once, and what a killed `ember models rm` leaves is swept like a staging folder."""
    return models_dir / f".rm-{os.getpid()}-{folder_name[:64]}-{secrets.token_hex(4)}"


def sweep_abandoned(models_dir: Path) -> list[Path]:
    """Remove the staging folders of processes that are gone; a pull killed while swapping
    folders gets its previous model folder back first. Returns the folders removed."""
    if os.name == "nt":  # no harmless liveness probe there (signal 0 is CTRL_C_EVENT)
        return []
    return _sweep(models_dir, lambda pid: not _running(pid), pre_pid=True)


def discard_own(models_dir: Path) -> list[Path]:
    """Remove this process's staging folders, as sweep_abandoned would once it is gone: for a
    command interrupted at any point, even before its own cleanup could see the folder."""
    return _sweep(models_dir, lambda pid: pid == os.getpid(), pre_pid=False)


def _sweep(models_dir: Path, abandoned: Callable[[int], bool], *, pre_pid: bool) -> list[Path]:
    removed = []
    try:
        candidates = list(models_dir.glob(".*"))
    except OSError:  # unreadable: then nothing could be staged there either
        return []
    for folder in candidates:
        if folder.is_symlink() or not folder.is_dir():
            continue
        match = _STAGING_NAME.match(folder.name)
        if match is not None:
            if not abandoned(int(match["adder"] or match["puller"])):
                continue
        else:
            match = _PRE_PID_NAME.match(folder.name) if pre_pid else None
            if match is None or not _idle_for(folder, PRE_PID_IDLE_SECONDS):
                continue
        _remove(folder, models_dir / match["model"] if match["model"] else None)
        removed.append(folder)
    return removed


def _remove(folder: Path, target: Path | None) -> None:
    """Remove an abandoned staging folder; a pull's, killed between its two renames, first
    gives its previous model folder back to `target`."""
    previous = folder / PREVIOUS
    if target is not None and (previous / SETTINGS_FILE).is_file() and not os.path.lexists(target):
        os.replace(previous, target)
    shutil.rmtree(folder, ignore_errors=True)


def _idle_for(folder: Path, seconds: float) -> bool:
    """Whether nothing in `folder`, itself included, was modified in the last `seconds`."""
    newest = 0.0
    try:
        for parent, names, files in os.walk(folder):
            newest = max(newest, os.lstat(parent).st_mtime)
            for name in (*names, *files):
                newest = max(newest, os.lstat(os.path.join(parent, name)).st_mtime)
    except OSError:  # changing under us, or unreadable: not provably idle
        return False
    return time.time() - newest > seconds


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
