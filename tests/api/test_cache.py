"""The optional embedding cache: hits in memory, and on disk across restarts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from ember.settings import ServerSettings
from tests.support.models import write_fake_model
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
