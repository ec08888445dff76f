"""Metrics in Prometheus format, one access-log line per request, the OpenAPI document."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ember.models import registry as registry_module
from ember.models.manage import remove_model
from ember.models.settings import ModelSettings, read_settings, write_settings
from ember.settings import ServerSettings
from tests.support.models import write_fake_model
from tests.support.server import RunningServer, serve_in_thread


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    models_dir = tmp_path_factory.mktemp("models")
    write_fake_model(models_dir, "tiny")
    settings = ServerSettings(home=models_dir.parent, models_dir=models_dir, api_key="k")
    with serve_in_thread(settings) as running:
        yield running


def test_metrics_count_requests_tokens_batches_and_loads(server: RunningServer) -> None:
    headers = {"Authorization": "Bearer k"}
    for _ in range(3):
        httpx.post(
            f"{server.base_url}/v1/embeddings",
            json={"model": "tiny", "input": ["hello world", "python"]},
            headers=headers,
        )
    counted = 'ember_requests_total{route="/v1/embeddings",status="200"} 3.0'
    deadline = time.monotonic() + 5  # a request is counted just after its reply is sent
    response = httpx.get(f"{server.base_url}/metrics", headers=headers)
    while counted not in response.text and time.monotonic() < deadline:
        time.sleep(0.01)
        response = httpx.get(f"{server.base_url}/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert counted in text
    assert 'ember_tokens_total{model="tiny"} 21.0' in text  # 3 x (4 + 3)
    assert 'ember_inputs_total{model="tiny"} 6.0' in text
    assert "ember_batch_sequences_count" in text
    assert 'ember_model_load_seconds{model="tiny"}' in text
    assert 'ember_queue_depth{model="tiny"} 0.0' in text
    assert "ember_request_duration_seconds_bucket" in text
    assert httpx.get(f"{server.base_url}/metrics").status_code == 401


def test_a_removed_model_leaves_the_metrics_and_an_unloaded_one_stays(tmp_path: Path) -> None:
    """A model removed (`ember models rm`) kept its series for the server's life, its queue
    depth at 0; a server whose models come and go grew one set per model id. One merely
    unloaded (here by keep_alive) may load again: it keeps them."""
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, "kept", keep_alive=0)
    write_fake_model(models_dir, "removed")
    settings = ServerSettings(home=tmp_path, models_dir=models_dir, idle_check_seconds=0.05)
    with serve_in_thread(settings) as running, httpx.Client(base_url=running.base_url) as client:
        # "kept" last: a new model's worker is what lets the scheduler forget one retired,
        # and kept's, unloaded at once, would lose its queue depth before the first scrape.
        for model in ("removed", "kept"):
            payload = {"model": model, "input": "hello"}
            assert client.post("/v1/embeddings", json=payload).status_code == 200
        before = client.get("/metrics").text
        remove_model(models_dir, "removed")
        deadline = time.monotonic() + 5
        while client.get("/v1/models/kept").json()["loaded"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not client.get("/v1/models/kept").json()["loaded"]
        after = client.get("/metrics").text
    series = ("ember_inputs_total", "ember_tokens_total", "ember_model_load_seconds")
    for name in (*series, "ember_queue_depth"):
        assert f'{name}{{model="removed"}}' in before
        assert f'{name}{{model="kept"}}' in before
        assert f'{name}{{model="kept"}}' in after
    assert 'model="removed"' not in after


def test_a_scrape_parses_a_settings_file_again_only_once_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each scrape rescans the models (a model removed loses its series), and parsed every
    model's model.json again, changed or not; a changed one must still count."""
    parsed: list[Path] = []

    def counted_read(folder: Path) -> ModelSettings:
        parsed.append(folder)
        return read_settings(folder)

    monkeypatch.setattr(registry_module, "read_settings", counted_read)
    models_dir = tmp_path / "models"
    tiny = write_fake_model(models_dir, "tiny")
    other = write_fake_model(models_dir, "other")
    settings = ServerSettings(home=tmp_path, models_dir=models_dir)
    with serve_in_thread(settings) as running, httpx.Client(base_url=running.base_url) as client:
        payload = {"model": "tiny", "input": "hello"}
        assert client.post("/v1/embeddings", json=payload).status_code == 200
        assert parsed == [other, tiny]  # at start-up
        scrapes = [client.get("/metrics").text for _ in range(2)]
        assert parsed == [other, tiny]
        write_settings(tiny, read_settings(tiny).model_copy(update={"id": "renamed"}))
        changed = client.get("/metrics").text
        assert parsed == [other, tiny, tiny]
        assert client.get("/metrics").status_code == 200  # the new file is known now
    for scrape in scrapes:
        assert 'ember_model_load_seconds{model="tiny"}' in scrape
    assert 'model="tiny"' not in changed
    assert parsed == [other, tiny, tiny]


def test_one_access_log_line_per_request(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ember.access"):
        httpx.post(
            f"{server.base_url}/v1/embeddings",
            json={"model": "tiny", "input": "hello"},
            headers={"Authorization": "Bearer k"},
        )
        # The line is written once the response has been sent, so it may trail the reply.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            record.name == "ember.access" for record in caplog.records
        ):
            time.sleep(0.01)
    lines = [
        json.loads(record.getMessage())
        for record in caplog.records
        if record.name == "ember.access"
    ]
    assert len(lines) == 1
    (line,) = lines
    assert line["status"] == 200
    assert line["model"] == "tiny"
    assert line["inputs"] == 1
    assert line["tokens"] == 3
    assert line["latency_ms"] > 0
    assert "k" not in {value for value in line.values() if isinstance(value, str)}


def test_openapi_document_describes_the_embeddings_request(server: RunningServer) -> None:
    schema = httpx.get(f"{server.base_url}/openapi.json").json()
    assert "/v1/embeddings" in schema["paths"]
    request_schema = schema["components"]["schemas"]["EmbeddingRequest"]
    assert {"input", "model"} <= set(request_schema["required"])
    assert httpx.get(f"{server.base_url}/docs").status_code == 200
