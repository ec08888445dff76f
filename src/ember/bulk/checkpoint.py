"""The checkpoint beside a bulk run's output: how many rows are durably written, and for what.

It is replaced atomically (temp file, fsync, rename) only after the rows it counts are
fsync'd, so at any instant it describes output that is really on disk. Its identity (input
path, size, mtime, a hash of the first MiB, the model and every option that changes the
vectors) must match exactly for a run to resume from it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ember.atomic_write import write_json_atomically
from ember.bulk.errors import CheckpointBroken, CheckpointMismatch
from ember.bulk.writers import WriterState
from ember.models.settings import ModelSettings

CHECKPOINT_VERSION = 1
_HEAD_BYTES = 1 << 20

Identity = dict[str, Any]


@dataclass(frozen=True)
class Checkpoint:
    """Progress of one run: `rows_done` input rows are written, per the `writer` state."""

    identity: Identity
    total_rows: int
    rows_done: int = 0
    writer: WriterState = field(default_factory=dict)
    tokens: int = 0
    truncated: int = 0
    empty: int = 0

    def advanced(
        self, rows: int, tokens: int, truncated: int, empty: int, writer: WriterState
    ) -> Checkpoint:
        return replace(
            self,
            rows_done=self.rows_done + rows,
            tokens=self.tokens + tokens,
            truncated=self.truncated + truncated,
            empty=self.empty + empty,
            writer=writer,
        )


def checkpoint_path(output: Path) -> Path:
    return output.with_name(output.name + ".ember-checkpoint.json")


def input_identity(path: Path) -> Identity:
    """What tells this input file apart from an edited or replaced one."""
    status = path.stat()
    with path.open("rb") as stream:
        head = hashlib.sha256(stream.read(_HEAD_BYTES)).hexdigest()
    return {
        "input path": str(path.resolve()),
        "input size": status.st_size,
        "input modified (ns)": status.st_mtime_ns,
        "input first MiB sha256": head,
    }


def model_identity(settings: ModelSettings) -> Identity:
    """The model id and a hash of its settings: pooling or prompts changed means other vectors."""
    canonical = json.dumps(settings.model_dump(mode="json"), sort_keys=True).encode()
    return {"model": settings.id, "model settings sha256": hashlib.sha256(canonical).hexdigest()}


def read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at `path`, or None when there is none."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except RecursionError as exc:  # garbage such as '[[[[…' nests past the parser's limit
        raise _unreadable(path, "nested too deeply") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _unreadable(path, str(exc)) from exc
    if not isinstance(raw, dict) or raw.pop("version", None) != CHECKPOINT_VERSION:
        raise _unreadable(path, f"not a version {CHECKPOINT_VERSION} checkpoint")
    try:
        checkpoint = Checkpoint(**raw)
    except TypeError as exc:
        raise _unreadable(path, str(exc)) from exc
    if problem := _malformed(checkpoint):
        raise _unreadable(path, problem)
    return checkpoint


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    write_json_atomically(path, {"version": CHECKPOINT_VERSION, **asdict(checkpoint)})
    try:
        descriptor = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return  # folders cannot be opened for syncing everywhere; the rename still happened
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_checkpoint(path: Path) -> None:
    """Remove the checkpoint and any temp file a kill left mid-replace."""
    path.unlink(missing_ok=True)
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        leftover.unlink(missing_ok=True)


def check_same_run(path: Path, saved: Checkpoint, identity: Identity) -> None:
    """Refuse to resume when anything that shapes the output differs from the saved run."""
    changes = [
        f"{name}: was {saved.identity.get(name)!r}, now {value!r}"
        for name, value in identity.items()
        if saved.identity.get(name) != value
    ]
    changes += [
        f"{name}: was {value!r}, now absent"
        for name, value in saved.identity.items()
        if name not in identity
    ]
    if changes:
        raise CheckpointMismatch(
            f"{path.name} was written by a different run, so it cannot be resumed:\n  "
            + "\n  ".join(changes)
            + f"\nPass --restart to start over (discarding the {saved.rows_done} rows done)."
        )


def _malformed(checkpoint: Checkpoint) -> str | None:
    """What is wrong with a checkpoint that is JSON of the right fields but not of their kinds:
    resuming from it failed deep in the run (a traceback), or, with no writer state, wrote
    the rows after it as a fresh output."""
    for name in ("identity", "writer"):
        if not isinstance(getattr(checkpoint, name), dict):
            return f"'{name}' is not an object"
    for name in ("total_rows", "rows_done", "tokens", "truncated", "empty"):
        value = getattr(checkpoint, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"'{name}' is not a count"
    if checkpoint.rows_done > checkpoint.total_rows:
        return "more rows done than there are"
    return None


def _unreadable(path: Path, detail: str) -> CheckpointBroken:
    return CheckpointBroken(
        f"The checkpoint {path.name} cannot be read ({detail}); start over with --restart."
    )
