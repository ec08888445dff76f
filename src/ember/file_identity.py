"""Which file a path names now, to tell a file replaced, renamed over or rewritten."""

from __future__ import annotations

import os
from pathlib import Path

# A file as the file system knows it: device, inode, size, modification time (ns). The size
# counts as well as the time, which a rewrite in place within the clock's tick keeps.
FileIdentity = tuple[int, int, int, int]


def file_identity(path: str | Path) -> FileIdentity | None:
    """`path`'s identity now; None once it is gone or cannot be read."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)
