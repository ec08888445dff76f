"""Vectors kept in a SQLite file, so re-indexing a corpus after a restart costs nothing."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ember.engines.base import Vectors
from ember.errors import EmberError


class DiskCache:
    """A key → float32 vector table; every call is short and serialised by a lock."""

    def __init__(self, path: Path) -> None:
        """Raises EmberError naming the file when it cannot be a cache (a folder, a file that
        is not SQLite, no permission)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (key BLOB PRIMARY KEY, vector BLOB NOT NULL)"
            )
        except (OSError, sqlite3.Error) as exc:
            raise EmberError(f"cannot use {path} as the cache (EMBER_CACHE_PATH): {exc}") from exc
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[bytes]) -> list[Vectors | None]:
        found: dict[bytes, Vectors] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._connection.execute(
                    f"SELECT key, vector FROM embeddings WHERE key IN ({marks})", chunk
                ).fetchall()
                for key, blob in rows:
                    found[bytes(key)] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        return [found.get(key) for key in keys]

    def put_many(self, items: Sequence[tuple[bytes, Vectors]]) -> None:
        rows = [(key, np.asarray(vector, dtype="<f4").tobytes()) for key, vector in items]
        with self._lock:
            self._connection.execute("BEGIN")
            self._connection.executemany(
                "INSERT OR REPLACE INTO embeddings (key, vector) VALUES (?, ?)", rows
            )
            self._connection.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._connection.close()
