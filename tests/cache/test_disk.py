"""The SQLite cache file: bounded, the oldest stored vectors evicted first."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from ember.cache.disk import DiskCache


def key(number: int) -> bytes:
    return number.to_bytes(32, "big")


def vector(number: int) -> np.ndarray:
    return np.full(4, number, dtype=np.float32)


def rows_in(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT count(*) FROM embeddings").fetchone()[0])


def test_the_file_keeps_at_most_its_cap_and_evicts_the_oldest_stored(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    cache = DiskCache(path, max_entries=100)
    for start in range(0, 250, 10):
        cache.put_many([(key(n), vector(n)) for n in range(start, start + 10)])
        assert rows_in(path) <= 100
    found = cache.get_many([key(n) for n in range(250)])
    cache.close()
    kept = [n for n, value in enumerate(found) if value is not None]
    assert 90 <= len(kept) <= 100
    assert kept == list(range(250 - len(kept), 250)), "the newest stored are the ones kept"
    for n in kept:
        np.testing.assert_array_equal(found[n], vector(n))


def test_a_key_stored_again_counts_as_new(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache.sqlite", max_entries=10)
    cache.put_many([(key(n), vector(n)) for n in range(10)])
    cache.put_many([(key(0), vector(0))])  # stored again: now the newest
    cache.put_many([(key(n), vector(n)) for n in range(10, 12)])
    found = cache.get_many([key(n) for n in range(12)])
    cache.close()
    assert found[0] is not None
    assert found[1] is None


def test_a_file_filled_under_a_larger_cap_is_trimmed_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    cache = DiskCache(path, max_entries=1000)
    cache.put_many([(key(n), vector(n)) for n in range(500)])
    cache.close()
    DiskCache(path, max_entries=200).close()
    assert rows_in(path) <= 200
