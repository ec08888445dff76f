"""Odd but valid requests that real OpenAI-compatible clients send, answered as OpenAI would."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from tests.api.test_errors import assert_error

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
