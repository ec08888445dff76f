"""The in-memory LRU, as the server uses it: from several threads at once."""

from __future__ import annotations

import threading

import numpy as np

from ember.cache.memory import MemoryCache

VECTOR = np.zeros(4, dtype=np.float32)


class HeldKey:
    """A key whose `held_at`-th hashing waits until released: a thread inside a cache call
    can be held between two of the dict operations the call makes."""

    def __init__(self, name: str, held_at: int) -> None:
        self.name = name
        self.held_at = held_at
        self.hashings = 0
        self.held = threading.Event()
        self.release = threading.Event()

    def __hash__(self) -> int:
        self.hashings += 1
        if self.hashings == self.held_at:
            self.held.set()
            self.release.wait(timeout=10)
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeldKey) and other.name == self.name


def test_a_hit_on_the_oldest_entry_survives_its_eviction_by_another_thread() -> None:
    """The server looks up and stores on worker threads at once (asyncio.to_thread); a hit
    on the least recently used entry, evicted between finding it and marking it used, raised
    KeyError: a 500 for that request."""
    cache = MemoryCache(2)
    # Hashed once to store it, once to find it, and once to mark it used (not being the
    # newest): held there.
    key = HeldKey("oldest", held_at=3)
    cache.put(key, VECTOR)
    cache.put(b"newer", VECTOR)
    found: list[object] = []
    errors: list[BaseException] = []

    def look_up() -> None:
        try:
            found.append(cache.get(key))
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=look_up)
    reader.start()
    assert key.held.wait(timeout=10)
    writer = threading.Thread(target=cache.put, args=(b"newest", VECTOR))  # evicts the oldest
    writer.start()
    writer.join(timeout=0.5)  # done at once without a lock; waits for the reader with one
    key.release.set()
    reader.join(timeout=10)
    writer.join(timeout=10)
    assert errors == []
    assert found[0] is VECTOR
    assert len(cache) == 2
