"""The API key guards every route but /health."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.api.conftest import API_KEY
from tests.support.server import RunningServer

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


def test_openai_client_with_wrong_key_raises_authentication_error(server: RunningServer) -> None:
    client = openai.OpenAI(base_url=server.api_url, api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.embeddings.create(model=MODEL, input="hello")
