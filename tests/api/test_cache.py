"""The optional embedding cache: hits in memory, and on disk across restarts."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ember.api import compute
from ember.cache import model_fingerprint
from ember.models.manage import remove_model
from ember.models.registry import ModelRegistry
from ember.settings import ServerSettings
from tests.reliability.expect import assert_error
from tests.support.models import WORDS, write_fake_model
from tests.support.server import serve_in_thread

MODEL = "all-MiniLM-L6-v2"
TEXTS = ["Cached once", "served twice", "Cached once"]


def post(client: httpx.Client, payload: dict[str, object]) -> httpx.Response:
    response = client.post("/v1/embeddings", json={"model": MODEL, **payload})
    assert response.status_code == 200, response.text
    return response


def test_memory_cache_serves_repeats_with_identical_vectors(
    default_models_dir: Path, tmp_path: Path
) -> None:
    settings = ServerSettings(home=tmp_path, models_dir=default_models_dir, cache_entries=100)
    with serve_in_thread(settings) as running, httpx.Client(base_url=running.base_url) as client:
        first = post(client, {"input": TEXTS})
        again = post(client, {"input": TEXTS})
        prompted = post(client, {"input": TEXTS[0], "dimensions": 384})
        metrics = client.get("/metrics").text
    assert first.headers["x-ember-cache-hits"] == "0"
    assert again.headers["x-ember-cache-hits"] == "3"
    assert prompted.headers["x-ember-cache-hits"] == "1"
    assert first.json()["data"] == again.json()["data"]
    assert first.json()["usage"] == again.json()["usage"]
    assert 'ember_cache_lookups_total{result="hit"} 4.0' in metrics
    assert 'ember_cache_lookups_total{result="miss"} 3.0' in metrics


def test_disk_cache_survives_a_restart(default_models_dir: Path, tmp_path: Path) -> None:
    settings = ServerSettings(
        home=tmp_path, models_dir=default_models_dir, cache_path=tmp_path / "cache.sqlite"
    )
    with serve_in_thread(settings) as running, httpx.Client(base_url=running.base_url) as client:
        first = post(client, {"input": TEXTS, "encoding_format": "base64"})
    with serve_in_thread(settings) as running, httpx.Client(base_url=running.base_url) as client:
        after_restart = post(client, {"input": TEXTS, "encoding_format": "base64"})
        truncated = post(client, {"input": TEXTS[1], "truncate": True})
    assert first.headers["x-ember-cache-hits"] == "0"
    assert after_restart.headers["x-ember-cache-hits"] == "3"
    assert truncated.headers["x-ember-cache-hits"] == "1"
    assert first.json()["data"] == after_restart.json()["data"]


def test_without_cache_settings_there_is_no_cache_header(
    default_models_dir: Path, tmp_path: Path
) -> None:
    settings = ServerSettings(home=tmp_path, models_dir=default_models_dir)
    with serve_in_thread(settings) as running, httpx.Client(base_url=running.base_url) as client:
        assert "x-ember-cache-hits" not in post(client, {"input": "x"}).headers


def test_a_cache_file_locked_by_another_process_never_fails_a_request(
    default_models_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "cache.sqlite"
    settings = ServerSettings(home=tmp_path, models_dir=default_models_dir, cache_path=path)
    with (
        serve_in_thread(settings) as running,
        httpx.Client(base_url=running.base_url, timeout=30) as client,
    ):
        post(client, {"input": "stored before"})
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # a second server writing, say, past the busy timeout
        try:
            post(client, {"input": "computed while locked"})  # not stored: 500 before
        finally:
            other.execute("ROLLBACK")
            other.close()
        # The failed write left its transaction open: every later store failed, and so did
        # every request with an input the cache did not have.
        post(client, {"input": "stored after"})
        again = post(client, {"input": ["stored after", "stored before"]})
    assert again.headers["x-ember-cache-hits"] == "2"


def test_the_cache_file_keeps_at_most_its_cap(default_models_dir: Path, tmp_path: Path) -> None:
    settings = ServerSettings(
        home=tmp_path,
        models_dir=default_models_dir,
        cache_path=tmp_path / "cache.sqlite",
        cache_path_max_entries=2,
    )
    with serve_in_thread(settings) as running, httpx.Client(base_url=running.base_url) as client:
        post(client, {"input": ["first", "second", "third"]})
        again = post(client, {"input": ["first", "third"]})
    assert again.headers["x-ember-cache-hits"] == "1", "the oldest stored, 'first', was evicted"


def test_a_model_whose_weights_cannot_be_read_is_served_uncached(tmp_path: Path) -> None:
    """The cache keys on a hash of the weights; a loaded model whose file has gone since (here:
    a fake model, which has none) answered 500."""
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, "no-weights-file")
    settings = ServerSettings(home=tmp_path, models_dir=models_dir, cache_entries=10)
    payload = {"model": "no-weights-file", "input": ["a", "b"]}
    with serve_in_thread(settings) as running, httpx.Client(base_url=running.base_url) as client:
        responses = [client.post("/v1/embeddings", json=payload) for _ in range(2)]
    for response in responses:
        assert response.status_code == 200, response.text
        assert len(response.json()["data"]) == 2
        assert response.headers["x-ember-cache-hits"] == "0"


def slowed_fingerprints(monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[float]:
    """Hashing the weights takes `seconds` (a busy or slow disk): the fault injected. Returns
    the start of every hash."""
    started: list[float] = []

    def slow(weights: Sequence[Path], settings_json: str) -> bytes:
        started.append(time.monotonic())
        time.sleep(seconds)
        return model_fingerprint(weights, settings_json)

    monkeypatch.setattr(compute, "model_fingerprint", slow)
    return started


def model_with_weights(models_dir: Path, model_id: str) -> None:
    folder = write_fake_model(models_dir, model_id, model_file="weights.bin")
    (folder / "weights.bin").write_bytes(b"\0" * 1024)


def test_requests_arriving_together_hash_a_loaded_model_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each request that found no fingerprint for the model hashed its weights itself: after
    every load, every request in flight did (MiniLM: 90 MB, 0.1 s each), filling the threads
    that tokenise and load. A soak swapping two models with 12 clients saw p99 latency 10 s."""
    hashes = slowed_fingerprints(monkeypatch, 0.3)
    models_dir = tmp_path / "models"
    model_with_weights(models_dir, "hashed")
    settings = ServerSettings(home=tmp_path, models_dir=models_dir, cache_entries=100)
    with (
        serve_in_thread(settings) as running,
        httpx.Client(base_url=running.base_url, timeout=30) as client,
        ThreadPoolExecutor(8) as pool,
    ):
        payloads = [{"model": "hashed", "input": f"hello {word}"} for word in WORDS[:8]]
        responses = list(pool.map(lambda body: client.post("/v1/embeddings", json=body), payloads))
    assert [response.status_code for response in responses] == [200] * 8
    assert len(hashes) == 1


def test_the_request_timeout_covers_hashing_the_weights_which_finishes_for_the_next_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokenising, hashing the weights and looking the cache up ran outside the deadline: with
    EMBER_REQUEST_TIMEOUT=2, a soak got 96 of 882 answers 200 after 2-3.4 s."""
    hashes = slowed_fingerprints(monkeypatch, 1.5)
    models_dir = tmp_path / "models"
    model_with_weights(models_dir, "hashed")
    settings = ServerSettings(
        home=tmp_path, models_dir=models_dir, cache_entries=100, request_timeout=0.5
    )
    payload = {"model": "hashed", "input": "hello"}
    with (
        serve_in_thread(settings) as running,
        httpx.Client(base_url=running.base_url, timeout=30) as client,
    ):
        started = time.monotonic()
        response = client.post("/v1/embeddings", json=payload)
        elapsed = time.monotonic() - started
        assert_error(response, 503, "timeout")
        assert elapsed < 1.2, f"answered after {elapsed:.2f} s"
        time.sleep(1.5)  # the hash goes on and is kept: the next request does not start another
        assert client.post("/v1/embeddings", json=payload).status_code == 200
    assert len(hashes) == 1


def test_fingerprints_keep_no_entry_for_a_model_gone(tmp_path: Path) -> None:
    """One entry stayed for every model id ever served, removed ones included: models added
    and removed under new ids grew the dict without end. Not visible over HTTP, so asked of
    the class, on models loaded and removed as the server does it."""
    models_dir = tmp_path / "models"
    registry = ModelRegistry(models_dir)
    fingerprints = compute.Fingerprints()

    async def add_serve_and_remove(model_id: str) -> None:
        model_with_weights(models_dir, model_id)
        model = await registry.acquire(model_id)
        assert await fingerprints.of(model) is not None
        gone = weakref.ref(model)
        del model
        remove_model(models_dir, model_id)
        registry.rescan()  # what the next request or /v1/models does: the model is released
        while gone() is not None:  # freed on a thread of its own
            gc.collect()
            await asyncio.sleep(0.01)

    async def cycles() -> None:
        for number in range(5):
            await add_serve_and_remove(f"model-{number}")

    asyncio.run(cycles())
    registry.close()
    assert list(fingerprints._known) == ["model-4"]  # the last: swept when the next is made
