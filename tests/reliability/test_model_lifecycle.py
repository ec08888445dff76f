"""Models loaded, unloaded and removed many times leave no threads behind, and a request that
arrives as its model goes is served, never stalled.

The server is a real `ember serve` process; its thread count is read from /proc.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.models import write_fake_model
from tests.support.process import ember_process, wait_until_healthy
from tests.support.server import free_port

CYCLES = 20
LANES = 2  # threads each loaded model's worker may start


@dataclass(frozen=True)
class Served:
    process: subprocess.Popen[bytes]
    http: httpx.Client

    def threads(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Threads:"))[8:])

    def embed(self, model: str, value: str | list[str] = "hello") -> httpx.Response:
        return self.http.post("/v1/embeddings", json={"model": model, "input": value})

    def loaded(self, model: str) -> bool:
        cards = self.http.get("/v1/models").json()["data"]
        return bool(next(card["loaded"] for card in cards if card["id"] == model))


@contextmanager
def ember(tmp_path: Path, models_dir: Path, **env: str) -> Iterator[Served]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    args = ["serve", "--port", str(port), "--offline", "--models-dir", str(models_dir)]
    environment = {"EMBER_HOME": str(tmp_path / "home"), **env}
    with (
        ember_process(*args, env=environment, log=log) as process,
        httpx.Client(base_url=base_url, timeout=30) as http,
    ):
        wait_until_healthy(base_url, process, log)
        yield Served(process, http)


def settle(count: Callable[[], int], at_most: int, timeout: float = 10) -> int:
    """The thread count once it is at most `at_most`, or the last seen after `timeout`
    (threads that were told to end take a moment to do so)."""
    deadline = time.monotonic() + timeout
    while (seen := count()) > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


def test_removed_models_leave_no_threads(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, "resident")
    with ember(tmp_path, models_dir) as served:

        def use_and_remove(model: str) -> None:
            write_fake_model(models_dir, model, fake={"lanes": LANES})
            assert (
                served.embed(model, ["hello", "world", "lazy dog", "quick fox"]).status_code == 200
            )
            shutil.rmtree(models_dir / model)
            assert served.embed(model).status_code == 404  # the registry drops it

        assert served.embed("resident").status_code == 200
        for warm_up in range(3):  # the event loop's thread pool grows to its size
            use_and_remove(f"warm-{warm_up}")
        baseline = settle(served.threads, 0, timeout=1)
        for cycle in range(CYCLES):
            use_and_remove(f"gone-{cycle}")
        after = settle(served.threads, baseline)
        assert after <= baseline, f"{after - baseline} threads more after {CYCLES} removed models"
        assert served.embed("resident").status_code == 200


def test_models_unloaded_by_keep_alive_leave_no_threads(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, "resident")
    write_fake_model(models_dir, "brief", keep_alive=0.05, fake={"lanes": LANES})
    with ember(tmp_path, models_dir, EMBER_IDLE_CHECK_SECONDS="0.02") as served:
        assert served.embed("resident").status_code == 200
        baseline = served.threads()
        for _cycle in range(CYCLES):
            assert (
                served.embed("brief", ["hello", "world", "lazy dog", "quick fox"]).status_code
                == 200
            )
            deadline = time.monotonic() + 10
            while served.loaded("brief") and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not served.loaded("brief")
        # The executor that loads models may have grown meanwhile; an unloaded model's lanes
        # are the LANES threads beyond that.
        after = settle(served.threads, baseline + LANES - 1)
        assert after < baseline + LANES, f"{after - baseline} threads more with 'brief' unloaded"


def test_requests_racing_an_unload_are_all_served(tmp_path: Path) -> None:
    """keep_alive 0 and a reaper every 10 ms: the model is unloaded between most requests,
    often while the next one is being admitted."""
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, "brief", keep_alive=0, fake={"lanes": LANES})
    with ember(tmp_path, models_dir, EMBER_IDLE_CHECK_SECONDS="0.01") as served:
        assert served.embed("brief").status_code == 200
        baseline = served.threads()

        def client(index: int) -> list[int]:
            inputs = [["hello"], ["hello", "world", "lazy dog"], "quick fox"][index % 3]
            return [served.embed("brief", inputs).status_code for _ in range(40)]

        with ThreadPoolExecutor(4) as pool:
            statuses = [status for batch in pool.map(client, range(4)) for status in batch]
        assert statuses == [200] * len(statuses)
        settle(lambda: int(served.loaded("brief")), 0)
        after = settle(served.threads, baseline + LANES)
        assert after <= baseline + LANES


@pytest.fixture(autouse=True)
def _linux_only() -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("reads thread counts from /proc")


def test_keep_alive_goes_on_after_a_loaded_model_is_removed(tmp_path: Path) -> None:
    """The reaper unloaded by name; a model removed while loaded was not found, and the
    ModelNotFound it raised ended keep_alive for the server's life."""
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, "removed", keep_alive=0.2)
    write_fake_model(models_dir, "later", keep_alive=0.2)
    with ember(tmp_path, models_dir, EMBER_IDLE_CHECK_SECONDS="0.05") as served:
        assert served.embed("removed").status_code == 200
        shutil.rmtree(models_dir / "removed")
        time.sleep(1)  # no request meanwhile: the reaper finds the model gone before a rescan
        assert served.embed("later").status_code == 200
        assert settle(lambda: int(served.loaded("later")), 0) == 0, "keep_alive stopped"
