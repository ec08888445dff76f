"""A model that fails to load while clients crowd it: one attempt answers them all with an
OpenAI error, the server stays healthy, and the model loads once repaired."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

from ember.models.loader import LoadedModel, load_model
from ember.models.registry import ModelRegistry
from ember.models.settings import ModelSettings
from ember.settings import ServerSettings
from tests.reliability.expect import assert_error, metric
from tests.support.models import write_fake_model
from tests.support.server import serve_in_thread

CLIENTS = 8


class FailingLoads:
    """The real loader, slowed, failing as a runtime does on unreadable weights until
    `repaired`: the fault injected."""

    def __init__(self) -> None:
        self.repaired = False
        self.attempts = 0

    def __call__(self, folder: Path, settings: ModelSettings, reloading: bool) -> LoadedModel:
        self.attempts += 1
        time.sleep(0.3)
        if not self.repaired:
            raise RuntimeError("weights unreadable")
        return load_model(folder, settings, reloading=reloading)


def test_clients_crowding_a_model_that_fails_to_load_share_one_attempt(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, "broken")
    write_fake_model(models_dir, "fine")
    loads = FailingLoads()
    registry = ModelRegistry(models_dir, loads)
    settings = ServerSettings(home=tmp_path, models_dir=models_dir)
    with (
        serve_in_thread(settings, registry) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as http,
    ):

        def embed(model: str) -> httpx.Response:
            return http.post("/v1/embeddings", json={"model": model, "input": "hello"})

        with ThreadPoolExecutor(CLIENTS) as pool:
            responses = list(pool.map(embed, ["broken"] * CLIENTS))
        for response in responses:
            error = assert_error(response, 503, "model_load_failed")
            assert "weights unreadable" in error["message"]
        # Before: each client waiting on the load tried it again in turn (8 attempts).
        assert loads.attempts < CLIENTS
        loads.repaired = True
        assert embed("broken").status_code == 200
        client = openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0)
        assert len(client.embeddings.create(model="broken", input=["a", "b"]).data) == 2
        assert embed("fine").status_code == 200
        assert http.get("/health").status_code == 200


class FailingReloads:
    """The real loader, whose reloads fail (the files went bad after the first load)."""

    def __call__(self, folder: Path, settings: ModelSettings, reloading: bool) -> LoadedModel:
        if reloading:
            raise RuntimeError("weights unreadable")
        return load_model(folder, settings, reloading=reloading)


def test_an_instance_that_cannot_embed_and_cannot_be_reloaded_answers_at_once(
    tmp_path: Path,
) -> None:
    """The worker reloads such an instance to retry the batch; when the reload failed, the
    request was never answered until the request timeout (600 s by default) cut it."""
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, "chatty", fake={"embedding_mode": False})
    write_fake_model(models_dir, "fine")
    registry = ModelRegistry(models_dir, FailingReloads())
    settings = ServerSettings(home=tmp_path, models_dir=models_dir, request_timeout=10)
    with (
        serve_in_thread(settings, registry) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as http,
    ):
        response = http.post("/v1/embeddings", json={"model": "chatty", "input": "hello"})
        error = assert_error(response, 503, "model_load_failed")
        assert "weights unreadable" in error["message"]
        fine = http.post("/v1/embeddings", json={"model": "fine", "input": "hello"})
        assert fine.status_code == 200


class GatedLoads:
    """The real loader, held until `release` is set: a load slower than the request timeout."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.attempts = 0

    def __call__(self, folder: Path, settings: ModelSettings, reloading: bool) -> LoadedModel:
        self.attempts += 1
        self.release.wait(timeout=30)
        return load_model(folder, settings, reloading=reloading)


def gated_model(tmp_path: Path) -> tuple[GatedLoads, ModelRegistry]:
    """A registry of one fake model, "slow", whose load waits for `release`."""
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, "slow")
    loads = GatedLoads()
    return loads, ModelRegistry(models_dir, loads)


def test_the_request_timeout_covers_a_slow_load_which_finishes_for_the_next_request(
    tmp_path: Path,
) -> None:
    loads, registry = gated_model(tmp_path)
    settings = ServerSettings(home=tmp_path, models_dir=registry.models_dir, request_timeout=0.5)
    with (
        serve_in_thread(settings, registry) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as http,
    ):
        started = time.monotonic()
        response = http.post("/v1/embeddings", json={"model": "slow", "input": "hello"})
        elapsed = time.monotonic() - started
        error = assert_error(response, 503, "timeout")
        assert "within 0.5 s" in error["message"]
        # Before, the load was outside the timeout: the request waited for it (here, 30 s).
        assert elapsed < 10, f"answered after {elapsed:.1f} s"
        loads.release.set()
        # The abandoned load was not cancelled: it finishes, and the next request uses it.
        deadline = time.monotonic() + 20
        while registry.find("slow").loaded is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert http.post("/v1/embeddings", json={"model": "slow", "input": "hi"}).status_code == 200
        assert loads.attempts == 1
        assert http.get("/health").status_code == 200


def test_a_client_that_leaves_while_its_model_loads_is_let_go_and_the_load_finishes(
    tmp_path: Path,
) -> None:
    loads, registry = gated_model(tmp_path)
    settings = ServerSettings(home=tmp_path, models_dir=registry.models_dir)
    gone = 'ember_requests_total{route="/v1/embeddings",status="499"}'
    with serve_in_thread(settings, registry) as server:
        body = b'{"model": "slow", "input": "hello"}'
        host, port = server.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            connection.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            deadline = time.monotonic() + 10
            while loads.attempts == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
        # Before, the handler waited for the load (here, until released) to notice.
        deadline = time.monotonic() + 10
        while metric(server.base_url, gone) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(server.base_url, gone) == 1
        assert registry.find("slow").loaded is None  # the load is still held
        loads.release.set()
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            response = http.post("/v1/embeddings", json={"model": "slow", "input": "hi"})
        assert response.status_code == 200
        assert loads.attempts == 1  # the load the leaver started served the next request
