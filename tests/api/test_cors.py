"""CORS for listed origins: a browser app using the OpenAI JS SDK gets through its preflight."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from ember.api.errors import response_for
from ember.errors import OriginNotAllowed
from ember.settings import ServerSettings
from tests.api.test_errors import assert_error
from tests.support.models import write_fake_model
from tests.support.server import RunningServer, serve_in_thread

APP = "http://localhost:3000"
# What the OpenAI JS SDK's browser build adds to Authorization and Content-Type.
SDK_HEADERS = (
    "authorization,content-type,x-stainless-arch,x-stainless-lang,x-stainless-os,"
    "x-stainless-package-version,x-stainless-retry-count,x-stainless-runtime,"
    "x-stainless-runtime-version,x-stainless-timeout"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    models_dir = tmp_path_factory.mktemp("models")
    write_fake_model(models_dir, "tiny")
    settings = ServerSettings(
        home=models_dir.parent, models_dir=models_dir, cors_origins=[APP], api_key="sk-cors"
    )
    with serve_in_thread(settings) as running:
        yield running


def preflight(server: RunningServer, origin: str, **headers: str) -> httpx.Response:
    return httpx.options(
        f"{server.base_url}/v1/embeddings",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST", **headers},
    )


def test_the_js_sdks_headers_pass_the_preflight(server: RunningServer) -> None:
    response = preflight(server, APP, **{"Access-Control-Request-Headers": SDK_HEADERS})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP
    allowed = response.headers["access-control-allow-headers"].split(",")
    assert set(allowed) == set(SDK_HEADERS.split(","))


def test_a_listed_origin_may_reach_this_private_address(server: RunningServer) -> None:
    """Chrome's Private Network Access preflight, from a page on a public origin."""
    response = preflight(server, APP, **{"Access-Control-Request-Private-Network": "true"})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-private-network"] == "true"


@pytest.mark.parametrize(
    ("origin", "method", "refused"),
    [
        ("https://evil.example", "POST", "origin"),
        (APP, "PUT", "method"),
        ("https://evil.example", "PUT", "origin, method"),
    ],
)
def test_a_refused_preflight_is_the_error_tables_answer(
    server: RunningServer, origin: str, method: str, refused: str
) -> None:
    response = preflight(server, origin, **{"Access-Control-Request-Method": method})
    message = (
        f"CORS preflight refused, not allowed: {refused} (the origins allowed are listed in "
        "EMBER_CORS_ORIGINS)."
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": "cors_not_allowed",
        }
    }
    table = response_for(OriginNotAllowed(message))
    assert response.status_code == table.status_code
    assert response.content == table.body
    assert response.headers["content-type"] == table.headers["content-type"]
    # The preflight's own headers go along; a refused origin is not echoed.
    assert response.headers["access-control-allow-methods"] == "GET, HEAD, POST, OPTIONS"
    assert response.headers["vary"].startswith("Origin")
    assert ("access-control-allow-origin" in response.headers) == (origin == APP)


def test_answers_expose_retry_after_and_embers_headers(server: RunningServer) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/embeddings",
        json={"model": "tiny", "input": "hello"},
        headers={"Origin": APP, "Authorization": "Bearer sk-cors"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP
    exposed = response.headers["access-control-expose-headers"].lower().split(", ")
    assert {"retry-after", "x-ember-token-ids", "x-ember-cache-hits"} <= set(exposed)


def test_a_page_can_read_which_codings_a_415_asks_for(server: RunningServer) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/embeddings",
        content=b"not really brotli",
        headers={
            "Origin": APP,
            "Authorization": "Bearer sk-cors",
            "Content-Type": "application/json",
            "Content-Encoding": "br",
        },
    )
    assert response.status_code == 415, response.text
    assert response.headers["accept-encoding"] == "gzip, deflate"
    exposed = response.headers["access-control-expose-headers"].lower().split(", ")
    assert "accept-encoding" in exposed


def test_a_preflight_with_cors_off_says_how_to_turn_it_on(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    models_dir = tmp_path_factory.mktemp("models")
    write_fake_model(models_dir, "tiny")
    with serve_in_thread(ServerSettings(home=models_dir.parent, models_dir=models_dir)) as off:
        response = preflight(off, APP, **{"Access-Control-Request-Headers": SDK_HEADERS})
    error = assert_error(response, 405, code="method_not_allowed")
    assert "EMBER_CORS_ORIGINS" in error["message"]
    assert "access-control-allow-origin" not in response.headers
