"""Content-addressed lookups: a key is the model's fingerprint plus the exact token ids.

Token ids already carry the text, the prompt and any truncation; the fingerprint carries the
weights (their sha256), pooling and normalisation. `dimensions` is applied after the cache,
so one entry serves every requested size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ember.cache.disk import DiskCache
from ember.cache.memory import MemoryCache
from ember.engines.base import TokenIds, Vectors


def model_fingerprint(weights: Sequence[Path], settings_json: str) -> bytes:
    """sha256 over the weights files and the settings that shape the vectors."""
    digest = hashlib.sha256()
    for path in weights:
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 22):
                digest.update(chunk)
    digest.update(settings_json.encode())
    return digest.digest()


class EmbeddingCache:
    """Memory first, then disk; stores what was computed in both."""

    def __init__(
        self, entries: int, path: Path | None = None, path_max_entries: int = 1_000_000
    ) -> None:
        self._memory = MemoryCache(entries)
        self._disk = DiskCache(path, path_max_entries) if path is not None else None

    @staticmethod
    def keys(fingerprint: bytes, sequences: Sequence[TokenIds]) -> list[bytes]:
        return [
            hashlib.sha256(fingerprint + np.asarray(ids, dtype="<i8").tobytes()).digest()
            for ids in sequences
        ]

    def lookup(self, keys: Sequence[bytes]) -> list[Vectors | None]:
        """Blocking (it may read the disk): run it off the event loop."""
        found = [self._memory.get(key) for key in keys]
        missing = [position for position, vector in enumerate(found) if vector is None]
        if missing and self._disk is not None:
            from_disk = self._disk.get_many([keys[position] for position in missing])
            for position, vector in zip(missing, from_disk, strict=True):
                if vector is not None:
                    found[position] = vector
                    self._memory.put(keys[position], vector)
        return found

    def store(self, keys: Sequence[bytes], vectors: Vectors) -> None:
        """Blocking (it may write the disk): run it off the event loop."""
        for key, vector in zip(keys, vectors, strict=True):
            self._memory.put(key, np.array(vector, dtype=np.float32))
        if self._disk is not None:
            self._disk.put_many(list(zip(keys, vectors, strict=True)))

    def close(self) -> None:
        if self._disk is not None:
            self._disk.close()
