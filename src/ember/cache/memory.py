"""A bounded least-recently-used map of keys to vectors."""

from __future__ import annotations

import threading
from collections import OrderedDict

from ember.engines.base import Vectors


class MemoryCache:
    """Keeps at most `entries` vectors, forgetting the least recently used first.

    Thread-safe: the server looks up and stores from worker threads at once, and each call
    is several dict operations (a hit on the oldest entry, evicted by another thread's store
    between them, raised KeyError).
    """

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._vectors: OrderedDict[bytes, Vectors] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> Vectors | None:
        with self._lock:
            vector = self._vectors.get(key)
            if vector is not None:
                self._vectors.move_to_end(key)
            return vector

    def put(self, key: bytes, vector: Vectors) -> None:
        with self._lock:
            self._vectors[key] = vector
            self._vectors.move_to_end(key)
            while len(self._vectors) > self._entries:
                self._vectors.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._vectors)
