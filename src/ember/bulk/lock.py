"""One run per output: an exclusive lock on a file beside OUTPUT, held while the run lasts.

Two runs on one output would share its partial file and checkpoint: a second run started
with --restart deletes the first one's partial file, and the first then renames the second's
half-written one into place and reports success. The lock is `flock`, so the kernel drops
it when its holder dies (a killed run's lock file is just reused). Where `fcntl` does not
exist (Windows), runs are not locked.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ember.bulk.errors import OutputBusy


def lock_path(output: Path) -> Path:
    return output.with_name(output.name + ".ember-lock")


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold OUTPUT's lock for the block, or raise OutputBusy at once if a run holds it."""
    if sys.platform == "win32":
        yield
        return
    path = lock_path(output)
    descriptor = _locked(path, output)
    try:
        yield
    finally:
        # Removed while still held: a run waiting on this file then sees it is not the one
        # at the path any more, and locks the new one instead.
        path.unlink(missing_ok=True)
        os.close(descriptor)


if sys.platform != "win32":
    import fcntl

    def _locked(path: Path, output: Path) -> int:
        """A descriptor of the lock file at `path`, locked by this process."""
        while True:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                raise OutputBusy(
                    f"Another ember embed is already writing {output}; wait for it to end "
                    "or stop it, then run again."
                ) from None
            if _is_at(descriptor, path):
                return descriptor
            os.close(descriptor)  # its holder removed it between our open and our lock

    def _is_at(descriptor: int, path: Path) -> bool:
        try:
            at_path = path.stat()
        except FileNotFoundError:
            return False
        held = os.fstat(descriptor)
        return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)
