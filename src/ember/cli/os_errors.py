"""OS errors of a command as one plain line naming the path and the reason, not Python's
`[Errno 13] Permission denied: '/x/y'`, which names no action and quotes the path."""

from __future__ import annotations

import errno
import os
from pathlib import Path

_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted",
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "it is a folder",
    errno.ENOSPC: "no space left on the disk",
    errno.EDQUOT: "over the disk quota",
    errno.EFBIG: "too large for the file system",
    errno.EROFS: "the file system is read-only",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ELOOP: "too many symbolic links (a loop?)",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files",
    errno.EIO: "input/output error (a failing disk or network share?)",
}
# A write to a file already open raises without a file name; these can only be writes.
_WRITING = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def os_error_line(exc: OSError, reading: Path, writing: Path) -> str:
    """What a command that reads `reading` and writes `writing` (with files beside it, and
    its folder made if missing) could not do, and why: "cannot write /x/y: permission
    denied". Any other path is one it read (a model's files)."""
    reason = _REASONS.get(exc.errno or 0) or _plain(exc.strerror or str(exc))
    named = exc.filename
    if not isinstance(named, str | bytes):  # none, or a file descriptor
        if exc.errno in _WRITING:
            return f"cannot write {writing}: {reason}"
        return f"{reason} (reading {reading}, writing {writing})"
    path = Path(os.fsdecode(named))
    making_folder = path.absolute() in writing.absolute().parents
    written = making_folder or _beside(path, writing)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and (blocker := _file_in(path)) is not None:
        verb, target = ("write", writing) if written else ("read", path)
        return f"cannot {verb} {target}: {blocker} is a file, not a folder"
    if making_folder:
        return f"cannot create the folder {path}: {reason}"
    if not written:
        return f"cannot read {path}: {reason}"
    if exc.errno == errno.ENAMETOOLONG and path.absolute() != writing.absolute():
        reason += " (files kept beside OUTPUT add to its name: shorten it)"
    return f"cannot write {path}: {reason}"


def _beside(path: Path, writing: Path) -> bool:
    """Is `path` OUTPUT or one of the files kept beside it (lock, checkpoint, partial)?"""
    output = writing.absolute()
    path = path.absolute()
    return path.parent == output.parent and path.name.startswith(output.name)


def _file_in(path: Path) -> Path | None:
    """The first of `path` and its folders, from the root down, that is not a folder."""
    for part in [*reversed(path.parents), path]:
        if part.exists() and not part.is_dir():
            return part
    return None


def _plain(strerror: str) -> str:
    """The C library's wording with a lower-case start, to follow "cannot read X:"."""
    return strerror[:1].lower() + strerror[1:]
