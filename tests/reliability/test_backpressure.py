"""A full queue answers 429 at once; work of clients that left or timed out is never computed.

The fake model sleeps per engine batch, so "in flight" and "queued" are states the tests can
set up; /metrics' `ember_batch_sequences_sum` counts every sequence the engine computed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from ember.settings import ServerSettings
from tests.reliability.expect import assert_error, metric
from tests.support.models import write_fake_model
from tests.support.server import RunningServer, serve_in_thread

STUCK = 2.0  # a batch long enough to fill the queue behind it on a busy machine
COMPUTED = "ember_batch_sequences_sum"


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    write_fake_model(folder, "stuck", fake={"delay_seconds": STUCK})
    write_fake_model(folder, "fast")
    return folder


def serve(models_dir: Path, **limits: Any) -> AbstractContextManager[RunningServer]:
    settings = ServerSettings(home=models_dir.parent, models_dir=models_dir, **limits)
    return serve_in_thread(settings)


@pytest.fixture
def server(models_dir: Path) -> Iterator[RunningServer]:
    with serve(models_dir, max_queued_inputs=4) as running:
        yield running


class Background:
    """Requests sent from threads, so a test can act while they wait."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.responses: list[httpx.Response] = []
        self._threads: list[threading.Thread] = []

    def post(self, model: str, value: str | list[str]) -> None:
        def send() -> None:
            response = httpx.post(
                f"{self.base_url}/v1/embeddings", json={"model": model, "input": value}, timeout=30
            )
            self.responses.append(response)

        thread = threading.Thread(target=send)
        thread.start()
        self._threads.append(thread)

    def join(self) -> list[httpx.Response]:
        for thread in self._threads:
            thread.join(timeout=30)
        return self.responses


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_full_queue_gets_429_with_retry_after_at_once(server: RunningServer) -> None:
    background = Background(server.base_url)
    background.post("stuck", "hello")  # taken by the engine: in flight, not queued
    wait_for(lambda: metric(server.base_url, COMPUTED) == 1)
    background.post("stuck", ["hello world"] * 4)  # waits: the queue now holds its limit
    wait_for(lambda: metric(server.base_url, 'ember_queue_depth{model="stuck"}') == 4)

    started = time.monotonic()
    refused = httpx.post(
        f"{server.base_url}/v1/embeddings", json={"model": "stuck", "input": "dog"}, timeout=30
    )
    elapsed = time.monotonic() - started
    error = assert_error(refused, 429, "rate_limit_exceeded")
    assert error["type"] == "rate_limit_error"
    assert "stuck" in error["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert elapsed < STUCK / 2, f"the 429 took {elapsed:.2f} s, as if it had waited"

    # The queue is per model: another model is not held up.
    other = httpx.post(
        f"{server.base_url}/v1/embeddings", json={"model": "fast", "input": "dog"}, timeout=30
    )
    assert other.status_code == 200
    assert [response.status_code for response in background.join()] == [200, 200]
    assert metric(server.base_url, 'ember_queue_depth{model="stuck"}') == 0


def test_a_request_larger_than_the_queue_is_taken_when_the_queue_is_idle(
    server: RunningServer,
) -> None:
    """With 4 inputs allowed to wait, 8 would get 429 forever; an idle model takes them."""
    response = httpx.post(
        f"{server.base_url}/v1/embeddings",
        json={"model": "fast", "input": ["hello world"] * 8},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 8


@contextmanager
def hanging_up(base_url: str, body: bytes) -> Iterator[None]:
    """Send a whole request; on leaving, close the connection without reading the answer."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        yield


def test_work_of_a_client_that_hung_up_is_never_computed(models_dir: Path) -> None:
    with serve(models_dir, max_queued_inputs=1000) as server:
        background = Background(server.base_url)
        background.post("stuck", "hello")  # in flight for STUCK seconds
        wait_for(lambda: metric(server.base_url, COMPUTED) == 1)
        body = b'{"model": "stuck", "input": [' + b", ".join([b'"lazy dog"'] * 50) + b"]}"
        with hanging_up(server.base_url, body):
            wait_for(lambda: metric(server.base_url, 'ember_queue_depth{model="stuck"}') == 50)
        # The client has gone: its 50 queued inputs are dropped.
        wait_for(lambda: metric(server.base_url, 'ember_queue_depth{model="stuck"}') == 0)
        assert [response.status_code for response in background.join()] == [200]
        time.sleep(0.5)  # had the 50 been kept, the worker would have taken them by now
        assert metric(server.base_url, COMPUTED) == 1
        assert metric(server.base_url, 'ember_inputs_total{model="stuck"}') == 1
        after = httpx.post(
            f"{server.base_url}/v1/embeddings", json={"model": "stuck", "input": "dog"}, timeout=30
        )
        assert after.status_code == 200
        assert metric(server.base_url, COMPUTED) == 2


def test_a_client_that_hangs_up_while_sending_is_no_server_error(server: RunningServer) -> None:
    body = b'{"model": "fast", "input": "hello world"}'
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        time.sleep(0.2)
    served = 'ember_requests_total{route="/v1/embeddings",status="499"}'
    wait_for(lambda: metric(server.base_url, served) == 1)
    assert metric(server.base_url, 'ember_requests_total{route="/v1/embeddings",status="500"}') == 0
    after = httpx.post(
        f"{server.base_url}/v1/embeddings", json={"model": "fast", "input": "dog"}, timeout=30
    )
    assert after.status_code == 200


def test_timed_out_request_gets_503_and_its_work_is_dropped(models_dir: Path) -> None:
    timeout = STUCK / 2
    with serve(models_dir, request_timeout=timeout) as server:
        background = Background(server.base_url)
        background.post("fast", "hello")  # other models are served meanwhile
        background.post("stuck", "hello")  # in flight: times out, though the engine finishes it
        wait_for(lambda: metric(server.base_url, COMPUTED) == 2)
        started = time.monotonic()
        queued = httpx.post(
            f"{server.base_url}/v1/embeddings",
            json={"model": "stuck", "input": ["lazy dog"] * 10},
            timeout=30,
        )
        elapsed = time.monotonic() - started
        error = assert_error(queued, 503, "timeout")
        assert error["type"] == "server_error"
        assert f"within {timeout:g} s" in error["message"]
        assert elapsed < STUCK, f"the timeout answered after {elapsed:.2f} s"
        statuses = sorted(response.status_code for response in background.join())
        assert statuses == [200, 503]
        time.sleep(STUCK - timeout + 0.5)  # the in-flight batch ends; the worker looks again
        assert metric(server.base_url, COMPUTED) == 2  # the 10 queued inputs never ran
        assert metric(server.base_url, 'ember_queue_depth{model="stuck"}') == 0
