"""Every refusal of the contract: status, and an OpenAI error body with the right fields."""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import pytest

from ember.api import routes
from ember.api.errors import response_for
from ember.errors import EmberError, MethodNotAllowed, RouteNotFound

MODEL = "all-MiniLM-L6-v2"


def assert_error(response: httpx.Response, status: int, **expected: Any) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    for key, value in expected.items():
        assert error[key] == value, (key, error)
    return error


def test_unknown_model_lists_the_available_ones(http: httpx.Client) -> None:
    response = http.post("/v1/embeddings", json={"model": "nomic-embed-text", "input": "x"})
    error = assert_error(response, 404, code="model_not_found", type="invalid_request_error")
    assert "nomic-embed-text" in error["message"]
    assert MODEL in error["message"]


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"model": MODEL, "input": ""}, "input"),
        ({"model": MODEL, "input": []}, "input"),
        ({"model": MODEL, "input": ["ok", ""]}, "input"),
        ({"model": MODEL, "input": [[]]}, "input"),
        ({"model": MODEL, "input": 42}, "input"),
        ({"model": MODEL, "input": [1, "a"]}, "input"),
        ({"model": MODEL, "input": [1.5]}, "input"),
        ({"model": MODEL, "input": [True]}, "input"),
        ({"model": MODEL, "input": {"text": "x"}}, "input"),
        ({"model": MODEL, "input": None}, "input"),
        ({"model": MODEL}, "input"),
        ({"input": "x"}, "model"),
        ({"model": 7, "input": "x"}, "model"),
        ({"model": MODEL, "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": MODEL, "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": MODEL, "input": "x", "dimensions": "64"}, "dimensions"),
        ({"model": MODEL, "input": "x", "dimensions": 128}, "dimensions"),
        ({"model": MODEL, "input": [-1]}, "input"),
        ({"model": MODEL, "input": [2054, 2003, 1996, -1]}, "input"),
        ({"model": MODEL, "input": [10**9]}, "input"),
        ({"model": MODEL, "input": [100256]}, "input"),  # unused in cl100k: no token
        ({"model": MODEL, "input": [[40, 1093], [100261, 13]]}, "input"),
        ({"model": MODEL, "input": "x", "truncate": "yes"}, "truncate"),
        ({"model": MODEL, "input": "x", "truncate": 1}, "truncate"),
        ({"model": MODEL, "input": "x", "input_type": "poem"}, "input_type"),
    ],
)
def test_bad_requests_get_400_with_param(
    http: httpx.Client, payload: dict[str, Any], param: str
) -> None:
    response = http.post("/v1/embeddings", json=payload)
    assert_error(response, 400, param=param, type="invalid_request_error")


def test_dimensions_equal_to_native_size_is_accepted(http: httpx.Client) -> None:
    response = http.post("/v1/embeddings", json={"model": MODEL, "input": "x", "dimensions": 384})
    assert response.status_code == 200
    assert len(response.json()["data"][0]["embedding"]) == 384


@pytest.mark.parametrize(
    "body", [b"{", b"not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe"], ids=repr
)
def test_malformed_json_gets_400(http: httpx.Client, body: bytes) -> None:
    response = http.post(
        "/v1/embeddings", content=body, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, type="invalid_request_error")


def test_body_over_the_limit_gets_413(http: httpx.Client) -> None:
    huge = {"model": MODEL, "input": "word " * 5_000_000}
    response = http.post("/v1/embeddings", json=huge)
    assert_error(response, 413, code="request_too_large")


def test_unknown_route_and_method_are_openai_errors(http: httpx.Client) -> None:
    assert_error(http.get("/v1/nothing"), 404, type="invalid_request_error")
    assert_error(http.get("/v1/embeddings"), 405, type="invalid_request_error")


def test_unknown_fields_are_ignored(http: httpx.Client) -> None:
    response = http.post(
        "/v1/embeddings", json={"model": MODEL, "input": "x", "user": "u-1", "extra": {"a": 1}}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("GET", "/v1/embeddings", "POST"), ("POST", "/v1/models", "GET"), ("PUT", "/health", "GET")],
)
def test_a_wrong_method_names_the_allowed_ones(
    http: httpx.Client, method: str, path: str, allowed: str
) -> None:
    """RFC 9110 15.5.6: a 405 carries an Allow header listing the methods the route takes."""
    response = http.request(method, path)
    error = assert_error(response, 405, code="method_not_allowed")
    assert allowed in response.headers.get("allow", "").split(", ")
    table = response_for(MethodNotAllowed(error["message"], response.headers["allow"]))
    assert response.content == table.body  # the error table's answer
    assert response.headers["allow"] == table.headers["allow"]


def test_a_path_no_route_answers_gets_the_tables_404(http: httpx.Client) -> None:
    response = http.post("/embeddings/v1", json={"model": MODEL, "input": "x"})
    error = assert_error(response, 404, code="not_found", type="invalid_request_error")
    assert error["message"].startswith("Invalid URL (POST /embeddings/v1): Ember answers")
    assert response.content == response_for(RouteNotFound(error["message"])).body


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip, br", "compress"])
def test_a_body_in_a_coding_ember_cannot_decode_is_a_415_naming_those_it_can(
    http: httpx.Client, coding: str
) -> None:
    """Ember decodes gzip and deflate (test_compressed_bodies); any other coding is refused
    saying so, not as bad JSON, and as RFC 9110 15.5.16 says: 415 (it was 400, as if the body
    were wrong), with Accept-Encoding naming what to send instead."""
    response = http.post(
        "/v1/embeddings",
        content=gzip.compress(b'{"model": "all-MiniLM-L6-v2", "input": "x"}'),
        headers={"Content-Type": "application/json", "Content-Encoding": coding},
    )
    error = assert_error(
        response, 415, type="invalid_request_error", code="unsupported_content_encoding"
    )
    assert "Content-Encoding" in error["message"]
    assert coding in error["message"]
    assert response.headers["accept-encoding"] == "gzip, deflate"


def test_an_identity_content_encoding_is_read_as_is(http: httpx.Client) -> None:
    response = http.post(
        "/v1/embeddings",
        json={"model": MODEL, "input": "x"},
        headers={"Content-Encoding": "identity"},
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "payload", "broken"),
    [
        ("GET", f"/v1/models/{MODEL}", None, "_card"),
        (
            "POST",
            "/v1/embeddings",
            {"model": MODEL, "input": "x", "dimensions": 64},
            "_check_dimensions",
        ),
    ],
    ids=["FastAPI route", "embeddings route"],
)
def test_a_bug_is_the_tables_plain_500_without_its_trace(
    http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    path: str,
    payload: dict[str, Any] | None,
    broken: str,
) -> None:
    """A bug inside a route (here planted in a helper it calls) reaches the client as the
    table's answer to the root EmberError, on both routes that answer one."""

    def bug(*_args: object) -> None:
        raise RuntimeError("secret detail of the bug")

    monkeypatch.setattr(routes, broken, bug)
    response = http.request(method, path, json=payload)
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "Internal server error.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    table = response_for(EmberError("Internal server error."))
    assert response.status_code == table.status_code
    assert response.content == table.body
    assert response.headers["content-type"] == table.headers["content-type"]
