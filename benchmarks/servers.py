"""Starting, probing and stopping the servers a run measures, all on 127.0.0.1.

A server is ready when it returns a vector, not when it opens its port: that is also the end
of a cold start (process start to first vector).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
from systems import Memory

HOST = "127.0.0.1"
POLL_SECONDS = 0.005


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def process_memory(pid: int) -> Memory | None:
    """VmRSS and VmHWM of a live process, from /proc (Linux)."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0]) * 1024
    except OSError:
        return None
    return Memory(fields["VmRSS"], fields["VmHWM"])


@dataclass
class ServerProcess:
    """A server this run started; `stop` ends it (SIGTERM, then SIGKILL after a grace)."""

    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def memory(self) -> Memory | None:
        return process_memory(self.process.pid)

    def stop(self, grace: float = 15.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=grace)

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def launch(
    name: str, command: list[str], port: int, log_dir: Path, env: dict[str, str]
) -> ServerProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return ServerProcess(name, process, f"http://{HOST}:{port}", log_path)


def wait_for_vector(server: ServerProcess, model: str, timeout: float) -> float:
    """Poll until the server returns one vector; seconds from now. Raises on death/timeout."""
    started = time.perf_counter()
    body = orjson.dumps({"model": model, "input": "The first vector after a cold start."})
    url = f"{server.base_url}/v1/embeddings"
    with httpx.Client(timeout=httpx.Timeout(timeout, connect=1.0)) as client:
        while time.perf_counter() - started < timeout:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                response = client.post(
                    url, content=body, headers={"content-type": "application/json"}
                )
                if response.status_code == 200 and orjson.loads(response.content)["data"]:
                    return time.perf_counter() - started
            time.sleep(POLL_SECONDS)
    raise RuntimeError(f"{server.name} gave no vector within {timeout:.0f} s:\n{server.log_tail()}")


def ember_command(python: str, home: Path, port: int) -> list[str]:
    return [python, "-m", "ember", "serve", "--offline", "--home", str(home), "--port", str(port)]


def ember_environment() -> dict[str, str]:
    """The server's environment: no vector cache, since every round repeats the same texts."""
    env = {name: value for name, value in os.environ.items() if name != "EMBER_CACHE_PATH"}
    return {**env, "EMBER_CACHE_ENTRIES": "0"}


def start_ember(
    home: Path, log_dir: Path, model: str, python: str = sys.executable
) -> ServerProcess:
    port = free_port()
    server = launch("ember", ember_command(python, home, port), port, log_dir, ember_environment())
    try:
        wait_for_vector(server, model, timeout=120)
    except Exception:
        server.stop()
        raise
    return server


def cold_start(
    name: str, command: list[str], port: int, model: str, log_dir: Path, env: dict[str, str]
) -> tuple[float, Memory | None]:
    """Seconds from process start to first vector, and the server's memory just after."""
    started = time.perf_counter()
    server = launch(name, command, port, log_dir, env)
    try:
        wait_for_vector(server, model, timeout=120)
        seconds = time.perf_counter() - started
        return seconds, server.memory()
    finally:
        server.stop()
