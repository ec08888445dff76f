"""A bounded least-recently-used map of keys to vectors."""

from __future__ import annotations

from collections import OrderedDict

from ember.engines.base import Vectors


class MemoryCache:
    """Keeps at most `entries` vectors, forgetting the least recently used first."""

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._vectors: OrderedDict[bytes, Vectors] = OrderedDict()

    def get(self, key: bytes) -> Vectors | None:
        vector = self._vectors.get(key)
        if vector is not None:
            self._vectors.move_to_end(key)
        return vector

    def put(self, key: bytes, vector: Vectors) -> None:
        self._vectors[key] = vector
        self._vectors.move_to_end(key)
        while len(self._vectors) > self._entries:
            self._vectors.popitem(last=False)

    def __len__(self) -> int:
        return len(self._vectors)
