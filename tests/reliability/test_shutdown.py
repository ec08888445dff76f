"""`ember serve` asked to stop: stops accepting, finishes in-flight requests (bounded), exits 0."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from ember.api.errors import response_for
from ember.api.server import GracefulServer
from ember.errors import ShuttingDown
from tests.reliability.expect import assert_error, metric
from tests.support.models import write_fake_model
from tests.support.process import ember_process, wait_until_healthy
from tests.support.server import free_port

TEXTS = ["hello", "world", "python", "lazy dog", "quick fox", "brown dog"]
CUT_SHORT = "The server is shutting down and could not finish this request; retry it."


def start_args(models_dir: Path, port: int) -> list[str]:
    return ["serve", "--port", str(port), "--offline", "--models-dir", str(models_dir)]


def send_all(base_url: str, texts: list[str]) -> tuple[list[threading.Thread], list[object]]:
    """One request per text, each from its own thread; results land in the returned list."""
    results: list[object] = [None] * len(texts)

    def send(position: int) -> None:
        try:
            results[position] = httpx.post(
                f"{base_url}/v1/embeddings",
                json={"model": "slow", "input": texts[position]},
                timeout=60,
            )
        except httpx.HTTPError as exc:
            results[position] = exc

    threads = [threading.Thread(target=send, args=(position,)) for position in range(len(texts))]
    for thread in threads:
        thread.start()
    return threads, results


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def all_received(base_url: str, count: int) -> bool:
    """Every request is either in an engine batch or queued."""
    started = metric(base_url, "ember_batch_sequences_sum")
    waiting = metric(base_url, 'ember_queue_depth{model="slow"}')
    return started + waiting == count


@dataclass
class BusyServer:
    """A running `ember serve` whose "slow" model holds requests that are all queued or running."""

    process: subprocess.Popen[bytes]
    port: int
    base_url: str
    log: Path
    threads: list[threading.Thread]
    results: list[object]


@contextmanager
def busy_server(
    tmp_path: Path, delay_seconds: float, texts: list[str], env: dict[str, str] | None = None
) -> Iterator[BusyServer]:
    """A server on a fake model taking `delay_seconds` per text, with `texts` sent, one request
    each, and every one of them received (in an engine batch or queued) before it yields."""
    write_fake_model(
        tmp_path / "models", "slow", ubatch_size=4, fake={"delay_seconds": delay_seconds}
    )
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    env = {"EMBER_HOME": str(tmp_path / "home"), **(env or {})}
    with ember_process(*start_args(tmp_path / "models", port), env=env, log=log) as process:
        wait_until_healthy(base_url, process, log)
        threads, results = send_all(base_url, texts)
        wait_for(lambda: all_received(base_url, len(texts)))
        yield BusyServer(process, port, base_url, log, threads, results)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=lambda sig: sig.name)
def test_sigterm_or_sighup_finishes_in_flight_requests_and_exits_0(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """SIGHUP (the terminal the server ran in was closed) stops it as SIGTERM does, not at
    once as Python's default action would."""
    # One input per engine batch, 0.6 s each: six requests take about 3.6 s to drain.
    with busy_server(tmp_path, 0.6, TEXTS) as busy:
        process, port, base_url, log = busy.process, busy.port, busy.base_url, busy.log
        threads, results = busy.threads, busy.results
        process.send_signal(stop)
        wait_for(lambda: not accepts_connections(port), timeout=2)
        assert process.poll() is None, "exited before finishing in-flight requests"
        for thread in threads:
            thread.join(timeout=30)
        assert process.wait(timeout=20) == 0, log.read_text()

    for text, response in zip(TEXTS, results, strict=True):
        assert isinstance(response, httpx.Response), f"{text}: {response!r}"
        assert response.status_code == 200, response.text
        assert len(response.json()["data"][0]["embedding"]) == 8
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/health", timeout=2)
    assert "Traceback" not in log.read_text()


def assert_cut_short(response: httpx.Response) -> None:
    """The error table's answer to ShuttingDown: 503, its body, and Retry-After."""
    assert_error(response, 503, "shutting_down")
    assert response.json() == {
        "error": {
            "message": CUT_SHORT,
            "type": "server_error",
            "param": None,
            "code": "shutting_down",
        }
    }
    table = response_for(ShuttingDown(CUT_SHORT))
    assert response.content == table.body
    assert response.headers["retry-after"] == table.headers["retry-after"] == "1"


def test_an_ignored_sighup_stays_ignored_so_nohup_keeps_the_server_running() -> None:
    """`nohup ember serve` asks for the server to outlive its terminal; SIGTERM still stops it."""
    server = GracefulServer(uvicorn.Config(app=lambda scope, receive, send: None))
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with server.capture_signals():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == server._ask_to_exit
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_sigint_with_requests_outlasting_the_grace_period_exits_0_in_bounded_time(
    tmp_path: Path,
) -> None:
    """Ctrl-C, as SIGTERM: stop accepting, wait `shutdown_grace_seconds` at most, exit 0."""
    grace = {"EMBER_SHUTDOWN_GRACE_SECONDS": "1"}
    with busy_server(tmp_path, 0.5, TEXTS * 3, grace) as busy:  # about 9 s of work
        process, port, log = busy.process, busy.port, busy.log
        threads, results = busy.threads, busy.results
        stopped = time.monotonic()
        process.send_signal(signal.SIGINT)
        wait_for(lambda: not accepts_connections(port), timeout=2)
        code = process.wait(timeout=20)
        elapsed = time.monotonic() - stopped
    for thread in threads:
        thread.join(timeout=30)
    assert code == 0, log.read_text()
    # The grace period, plus the engine batch already running when it ended.
    assert elapsed < 5, f"shutdown took {elapsed:.1f} s with a 1 s grace period"
    responses = [result for result in results if isinstance(result, httpx.Response)]
    assert len(responses) == len(results), results  # every client got an answer
    assert any(response.status_code == 200 for response in responses)
    for response in responses:
        if response.status_code != 200:
            assert_cut_short(response)


def test_server_that_cannot_bind_exits_non_zero(tmp_path: Path) -> None:
    """Exit 0 means a clean stop; a failed start must not look like one."""
    write_fake_model(tmp_path / "models", "slow")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log = tmp_path / "serve.log"
        env = {"EMBER_HOME": str(tmp_path / "home")}
        with ember_process(*start_args(tmp_path / "models", port), env=env, log=log) as process:
            try:
                code = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pytest.fail("the server kept running on a port it could not bind")
    assert code != 0


@pytest.mark.parametrize("grace", ["0.9", "inf"])
def test_a_grace_period_is_read_as_seconds_not_truncated_and_inf_waits(
    tmp_path: Path, grace: str
) -> None:
    """0.9 s is not 0 (which cut every in-flight request); inf waits for them all."""
    with busy_server(tmp_path, 0.3, ["hello"], {"EMBER_SHUTDOWN_GRACE_SECONDS": grace}) as busy:
        process, log, threads, results = busy.process, busy.log, busy.threads, busy.results
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=30)
        assert process.wait(timeout=20) == 0, log.read_text()
    response = results[0]
    assert isinstance(response, httpx.Response), response
    assert response.status_code == 200, response.text
    assert "Traceback" not in log.read_text()


def test_a_second_signal_cuts_in_flight_requests_short_and_exits_0_cleanly(
    tmp_path: Path,
) -> None:
    """Ctrl-C twice: stop waiting, answer what is still running 503, exit 0 at once, and
    close the app as a first signal does, with no traceback in the log."""
    with busy_server(tmp_path, 1.0, TEXTS) as busy:  # about 6 s of work
        process, log, threads, results = busy.process, busy.log, busy.threads, busy.results
        stopped = time.monotonic()
        process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=20)
        elapsed = time.monotonic() - stopped
    for thread in threads:
        thread.join(timeout=30)
    text = log.read_text()
    assert code == 0, text
    assert elapsed < 3, f"a second Ctrl-C took {elapsed:.1f} s to stop the server"
    for response in results:
        assert isinstance(response, httpx.Response), response
        if response.status_code != 200:
            assert_cut_short(response)
    assert "Traceback" not in text
    assert "Application shutdown complete" in text
