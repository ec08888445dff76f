"""Odd but valid requests that real OpenAI-compatible clients send, answered as OpenAI would."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.api.conftest import API_KEY
from tests.api.test_errors import assert_error
from tests.support.server import RunningServer

MODEL = "all-MiniLM-L6-v2"
JSON = {"Content-Type": "application/json"}


def vectors(response: httpx.Response) -> np.ndarray[Any, np.dtype[np.float64]]:
    assert response.status_code == 200, response.text
    return np.asarray([item["embedding"] for item in response.json()["data"]])


def test_lone_surrogate_escapes_embed_as_replacement_characters(http: httpx.Client) -> None:
    """JavaScript's JSON.stringify writes `\\ud83d` for a string cut inside an emoji; Python's
    json and OpenAI take it, and tiktoken reads it as U+FFFD."""
    body = (
        b'{"model": "all-MiniLM-L6-v2", '
        b'"input": ["cut \\ud83d", "\\udc00 end", "ok \\ud83d\\ude42"]}'
    )
    got = vectors(http.post("/v1/embeddings", content=body, headers=JSON))
    expected = vectors(
        http.post(
            "/v1/embeddings",
            json={"model": MODEL, "input": ["cut \ufffd", "\ufffd end", "ok \U0001f642"]},
        )
    )
    assert np.allclose(got, expected, atol=1e-6)


def test_a_lone_surrogate_in_the_model_name_is_named_back_without_a_500(
    http: httpx.Client,
) -> None:
    body = b'{"model": "nope\\ud83d", "input": "x"}'
    error = assert_error(http.post("/v1/embeddings", content=body, headers=JSON), 404)
    assert "nope\ufffd" in error["message"]


def test_a_utf8_byte_order_mark_is_ignored(http: httpx.Client) -> None:
    """Windows tools write one (PowerShell 5's UTF8, Notepad); RFC 8259 lets a parser skip it."""
    body = b'\xef\xbb\xbf{"model": "all-MiniLM-L6-v2", "input": "hello"}'
    got = vectors(http.post("/v1/embeddings", content=body, headers=JSON))
    expected = vectors(http.post("/v1/embeddings", json={"model": MODEL, "input": "hello"}))
    assert np.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b'{"model": "all-MiniLM-L6-v2", "input": "caf\xe9"}', "0xe9"),  # latin-1, not UTF-8
        (b'{"model": "all-MiniLM-L6-v2", "input": "x", "dimensions": NaN}', "NaN"),
        (b'{"model": "all-MiniLM-L6-v2", "input": "\\ud83d"', "delimiter"),  # unclosed
        (b"[" * 5000 + b"]" * 5000, "depth"),
    ],
    ids=["latin-1", "NaN", "unclosed-after-surrogate", "deep"],
)
def test_bodies_that_are_not_json_say_what_is_wrong(
    http: httpx.Client, body: bytes, names: str
) -> None:
    response = http.post("/v1/embeddings", content=body, headers=JSON)
    error = assert_error(response, 400, code="invalid_value", type="invalid_request_error")
    assert names in error["message"]


def test_options_sent_as_null_take_their_defaults(http: httpx.Client) -> None:
    """Clients generated from OpenAI's spec send each option they were not given as null."""
    nulls = {"encoding_format": None, "dimensions": None, "user": None, "truncate": None}
    response = http.post(
        "/v1/embeddings", json={"model": MODEL, "input": "hello", "input_type": None, **nulls}
    )
    expected = http.post("/v1/embeddings", json={"model": MODEL, "input": "hello"})
    assert response.status_code == 200, response.text
    assert response.json() == expected.json()  # floats, not base64


@pytest.mark.parametrize("path", ["/v1/embeddings/", "/embeddings", "/embeddings/"])
def test_embeddings_aliases_answer_in_place(http: httpx.Client, path: str) -> None:
    """A trailing slash got a bodiless 307 (httpx does not follow it by default); a base URL
    without /v1 got 404. Both are answered as /v1/embeddings, as llama.cpp's server does."""
    response = http.post(path, json={"model": MODEL, "input": "hello"})
    expected = http.post("/v1/embeddings", json={"model": MODEL, "input": "hello"})
    assert np.allclose(vectors(response), vectors(expected), atol=1e-6)


def test_models_without_v1_lists_the_models(http: httpx.Client) -> None:
    response = http.get("/models")
    assert response.status_code == 200, response.text
    assert [card["id"] for card in response.json()["data"]] == [MODEL]


def test_a_base_url_without_v1_works_with_the_openai_client(server: RunningServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    assert len(client.embeddings.create(model=MODEL, input="hello").data[0].embedding) == 384
    assert [model.id for model in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_aliases_still_need_the_key(server: RunningServer) -> None:
    response = httpx.post(f"{server.base_url}/embeddings", json={"model": MODEL, "input": "x"})
    assert_error(response, 401, code="invalid_api_key")
    assert_error(httpx.get(f"{server.base_url}/models"), 401, code="invalid_api_key")


def test_an_unknown_path_is_named_with_the_paths_there_are(http: httpx.Client) -> None:
    error = assert_error(http.post("/v1/embedding", json={}), 404, code="not_found")
    assert "Invalid URL (POST /v1/embedding)" in error["message"]
    assert "/v1/embeddings" in error["message"]
    error = assert_error(http.get("/v1/embeddings"), 405, code="method_not_allowed")
    assert error["message"] == "Method not allowed (GET /v1/embeddings): this path takes POST."
