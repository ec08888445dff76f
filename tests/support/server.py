"""Runs the real Ember app under uvicorn on a free loopback port, in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from ember.api.app import create_app
from ember.api.server import uvicorn_config
from ember.models.registry import ModelRegistry
from ember.settings import ServerSettings


@dataclass(frozen=True)
class RunningServer:
    base_url: str
    settings: ServerSettings
    server: uvicorn.Server

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serve_in_thread(
    settings: ServerSettings, registry: ModelRegistry | None = None
) -> Iterator[RunningServer]:
    """Start uvicorn with `create_app(settings, registry)`; stop it (lifespan included) on
    exit. A test passes its own registry to look at the loaded models."""
    port = free_port()
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": port})
    config = uvicorn_config(create_app(settings, registry), settings, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", settings, server)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
