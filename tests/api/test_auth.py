"""The API key guards every route but /health."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from ember.settings import ServerSettings
from tests.api.conftest import API_KEY
from tests.support.server import RunningServer, serve_in_thread

MODEL = "all-MiniLM-L6-v2"
BODY = {"model": MODEL, "input": "hello"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": "Bearer"},
        {"X-Api-Key": "wrong"},
        {"Authorization": f"Bearer {API_KEY}x"},
    ],
)
def test_missing_or_wrong_key_gets_401(server: RunningServer, headers: dict[str, str]) -> None:
    for method, path in (("POST", "/v1/embeddings"), ("GET", "/v1/models")):
        response = httpx.request(
            method, f"{server.base_url}{path}", json=BODY, headers=headers, timeout=30
        )
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key"
        assert error["type"] == "invalid_request_error"
        assert API_KEY not in error["message"]


@pytest.mark.parametrize(
    "headers", [{"Authorization": f"Bearer {API_KEY}"}, {"X-Api-Key": API_KEY}]
)
def test_right_key_in_either_header_is_accepted(
    server: RunningServer, headers: dict[str, str]
) -> None:
    response = httpx.post(f"{server.base_url}/v1/embeddings", json=BODY, headers=headers)
    assert response.status_code == 200


def test_health_needs_no_key(server: RunningServer) -> None:
    response = httpx.get(f"{server.base_url}/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    head = httpx.head(f"{server.base_url}/health")
    assert head.status_code == 200
    assert head.content == b""


@pytest.mark.parametrize("path", ["/v1/models", f"/v1/models/{MODEL}", "/metrics"])
def test_head_answers_as_get_without_a_body_and_needs_the_key(
    server: RunningServer, path: str
) -> None:
    key = {"Authorization": f"Bearer {API_KEY}"}
    got = httpx.get(f"{server.base_url}{path}", headers=key)
    head = httpx.head(f"{server.base_url}{path}", headers=key)
    assert (got.status_code, head.status_code) == (200, 200)
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert httpx.head(f"{server.base_url}{path}").status_code == 401


def test_openai_client_with_wrong_key_raises_authentication_error(server: RunningServer) -> None:
    client = openai.OpenAI(base_url=server.api_url, api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.embeddings.create(model=MODEL, input="hello")


def models_status(settings: ServerSettings, headers: list[tuple[bytes, bytes]]) -> int:
    with serve_in_thread(settings) as running:
        return httpx.get(f"{running.base_url}/v1/models", headers=headers).status_code


@pytest.mark.parametrize("configured", ["k-1\n", " k-1 ", "k-1\r\n"])
def test_a_key_read_with_surrounding_whitespace_is_the_key_without_it(
    tmp_path: Path, configured: str
) -> None:
    """A key from a file or an env file often ends in a newline; HTTP strips what clients
    send, so a key kept with it could never be presented."""
    settings = ServerSettings(home=tmp_path, api_key=configured)
    assert models_status(settings, [(b"Authorization", b"Bearer k-1")]) == 200
    assert models_status(settings, [(b"X-Api-Key", b"k-1")]) == 200
    assert models_status(settings, [(b"Authorization", b"Bearer k-2")]) == 401


def test_a_blank_key_is_no_key(tmp_path: Path) -> None:
    assert ServerSettings(home=tmp_path, api_key="  \n").api_key is None
    assert models_status(ServerSettings(home=tmp_path, api_key=" "), []) == 200


def test_a_non_ascii_key_is_compared_as_the_utf8_bytes_clients_send(tmp_path: Path) -> None:
    key = "clé-ключ"
    settings = ServerSettings(home=tmp_path, api_key=key)
    assert models_status(settings, [(b"Authorization", b"Bearer " + key.encode())]) == 200
    assert models_status(settings, [(b"X-Api-Key", key.encode())]) == 200
    assert models_status(settings, [(b"X-Api-Key", key.encode("latin-1", "replace"))]) == 401
