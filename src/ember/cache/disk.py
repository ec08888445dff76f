"""Vectors kept in a SQLite file, so re-indexing a corpus after a restart costs nothing."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ember.engines.base import Vectors
from ember.errors import EmberError

log = logging.getLogger(__name__)


# Past the cap, this share of it is evicted at once beyond the excess, so that the table is
# counted (a scan) once per that many stores, not after every one.
_EVICTION_SLACK = 0.05


class DiskCache:
    """A key → float32 vector table of at most `max_entries` rows, the oldest stored evicted
    first; every call is short and serialised by a lock.

    Without a cap the file grew with every new text for as long as the server ran (a soak
    stored 162 MB in 18 minutes). Eviction goes by the order of storing, not of use: marking
    each hit would make every read a write.

    A read or write that fails (the file locked by another process past SQLite's busy
    timeout, a full disk) is logged and counts as a miss or is skipped: a cache never fails
    a request whose vectors it could compute.
    """

    def __init__(self, path: Path, max_entries: int) -> None:
        """Raises EmberError naming the file when it cannot be a cache (a folder, a file that
        is not SQLite, no permission)."""
        self._max_entries = max_entries
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (key BLOB PRIMARY KEY, vector BLOB NOT NULL)"
            )
            # At most the rows there are: a replaced key counts again until the next count.
            self._rows_at_most = self._count()
        except (OSError, sqlite3.Error) as exc:
            raise EmberError(f"cannot use {path} as the cache (EMBER_CACHE_PATH): {exc}") from exc
        self._lock = threading.Lock()
        with self._lock:
            try:
                self._evict_past_cap()  # a smaller cap than the file was filled under
            except sqlite3.Error as exc:
                log.warning("cannot trim the embedding cache to its cap (%s)", exc)

    def get_many(self, keys: Sequence[bytes]) -> list[Vectors | None]:
        found: dict[bytes, Vectors] = {}
        with self._lock:
            try:
                for start in range(0, len(keys), 500):
                    chunk = list(keys[start : start + 500])
                    marks = ",".join("?" * len(chunk))
                    rows = self._connection.execute(
                        f"SELECT key, vector FROM embeddings WHERE key IN ({marks})", chunk
                    ).fetchall()
                    for key, blob in rows:
                        found[bytes(key)] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
            except sqlite3.Error as exc:
                log.warning("cannot read the embedding cache (%s): computing instead", exc)
        return [found.get(key) for key in keys]

    def put_many(self, items: Sequence[tuple[bytes, Vectors]]) -> None:
        rows = [(key, np.asarray(vector, dtype="<f4").tobytes()) for key, vector in items]
        with self._lock:
            try:
                self._connection.execute("BEGIN")
                self._connection.executemany(
                    "INSERT OR REPLACE INTO embeddings (key, vector) VALUES (?, ?)", rows
                )
                self._connection.execute("COMMIT")
                self._rows_at_most += len(rows)
                self._evict_past_cap()
            except sqlite3.Error as exc:
                # Left open, the transaction failed every later write ("cannot start a
                # transaction within a transaction") until a restart.
                if self._connection.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._connection.execute("ROLLBACK")
                log.warning("cannot store %d vectors in the embedding cache (%s)", len(rows), exc)

    def _count(self) -> int:
        return int(self._connection.execute("SELECT count(*) FROM embeddings").fetchone()[0])

    def _evict_past_cap(self) -> None:
        """Under the lock: past the cap, delete the oldest rows down to a little below it
        (rowids grow with each store, a replaced key's too)."""
        if self._rows_at_most <= self._max_entries:
            return
        rows = self._count()
        excess = rows - self._max_entries
        if excess > 0:
            excess += int(self._max_entries * _EVICTION_SLACK)
            deleted = self._connection.execute(
                "DELETE FROM embeddings WHERE rowid IN "
                "(SELECT rowid FROM embeddings ORDER BY rowid LIMIT ?)",
                (excess,),
            ).rowcount
            rows -= deleted
        self._rows_at_most = rows

    def close(self) -> None:
        with self._lock:
            self._connection.close()
