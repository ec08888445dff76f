"""Durable, atomic file writes: a crash or power cut leaves the old file or the new one, never
half of one."""

from __future__ import annotations

import codecs
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Let `write` fill a temp file beside `path`, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp makes it private; these files are not secret
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def write_json_atomically(path: Path, payload: Any) -> None:
    """`payload` as indented UTF-8 JSON, written atomically."""

    def write(stream: IO[bytes]) -> None:
        text = codecs.getwriter("utf-8")(stream)
        json.dump(payload, text, indent=2, ensure_ascii=False)
        text.write("\n")

    write_atomically(path, write)


def _sync_folder(folder: Path) -> None:
    """Make the rename durable too: until the folder is synced, a power cut can undo it."""
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open a folder; its renames are durable
        return
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
