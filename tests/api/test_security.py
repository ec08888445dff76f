"""Trusted hosts, CORS, and refusing to expose an unprotected server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ember.api.errors import response_for
from ember.api.hosts import allowed_hosts, host_name
from ember.errors import HostNotAllowed
from ember.settings import ServerSettings
from tests.support.models import write_fake_model
from tests.support.server import RunningServer, serve_in_thread


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    write_fake_model(folder, "tiny")
    return folder


@pytest.fixture(scope="module")
def server(models_dir: Path) -> Iterator[RunningServer]:
    with serve_in_thread(ServerSettings(home=models_dir.parent, models_dir=models_dir)) as running:
        yield running


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:1337", "127.0.0.1:9", "[::1]:1337", "LOCALHOST"]
)
def test_local_host_headers_are_served(server: RunningServer, host: str) -> None:
    response = httpx.get(f"{server.base_url}/v1/models", headers={"Host": host})
    assert response.status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:1337", "127.0.0.1.evil.example"])
def test_foreign_host_headers_are_refused_against_dns_rebinding(
    server: RunningServer, host: str
) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/embeddings",
        json={"model": "tiny", "input": "hello"},
        headers={"Host": host},
    )
    assert response.status_code == 403
    assert response.json() == {
        "error": {
            "message": "Host not allowed: add it with EMBER_ALLOWED_HOSTS.",
            "type": "invalid_request_error",
            "param": None,
            "code": "host_not_allowed",
        }
    }
    # What the error table renders for HostNotAllowed, byte for byte, with its headers.
    table = response_for(HostNotAllowed("Host not allowed: add it with EMBER_ALLOWED_HOSTS."))
    assert response.status_code == table.status_code
    assert response.content == table.body
    assert response.headers["content-type"] == table.headers["content-type"]
    assert response.headers["content-length"] == table.headers["content-length"]


def test_configured_hosts_and_wildcards() -> None:
    assert allowed_hosts("0.0.0.0", []) is None
    assert allowed_hosts("127.0.0.1", ["*"]) is None
    hosts = allowed_hosts("127.0.0.1", ["embed.lan"])
    assert hosts is not None
    assert "embed.lan" in hosts
    assert "localhost" in hosts
    assert host_name("[::1]:80") == "::1"
    assert host_name("Example.COM:8080") == "example.com"


def test_cors_is_off_by_default(server: RunningServer) -> None:
    response = httpx.options(
        f"{server.base_url}/v1/embeddings",
        headers={"Origin": "https://page.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_configured_origins(models_dir: Path) -> None:
    settings = ServerSettings(
        home=models_dir.parent, models_dir=models_dir, cors_origins=["https://app.example"]
    )
    with serve_in_thread(settings) as running:
        allowed = httpx.options(
            f"{running.base_url}/v1/embeddings",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.post(
            f"{running.base_url}/v1/embeddings",
            json={"model": "tiny", "input": "hello"},
            headers={"Origin": "https://other.example"},
        )
        assert "access-control-allow-origin" not in other.headers


def test_serving_beyond_loopback_without_a_key_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ember", "serve", "--host", "0.0.0.0", "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "without an API key" in result.stderr
    assert "--insecure" in result.stderr
