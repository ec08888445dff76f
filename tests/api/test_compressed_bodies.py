"""Request bodies compressed with gzip or deflate, as OpenAI's API takes them."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import httpx
import orjson
import pytest

from tests.api.test_errors import assert_error

MODEL = "all-MiniLM-L6-v2"
REQUEST = {"model": MODEL, "input": ["The quick brown fox", "jumps over the lazy dog"]}
BODY = orjson.dumps(REQUEST)


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def post(http: httpx.Client, content: bytes, coding: str) -> httpx.Response:
    headers = {"Content-Type": "application/json", "Content-Encoding": coding}
    return http.post("/v1/embeddings", content=content, headers=headers)


@pytest.mark.parametrize(
    ("coding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("GZIP", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", raw_deflate),  # what some clients send as deflate
        ("deflate, gzip", lambda data: gzip.compress(zlib.compress(data))),
        ("identity, gzip", gzip.compress),
        ("gzip", lambda data: gzip.compress(data[:20]) + gzip.compress(data[20:])),  # 2 members
    ],
    ids=["gzip", "x-gzip", "GZIP", "zlib", "raw-deflate", "deflate-then-gzip", "identity", "two"],
)
def test_a_compressed_body_gets_the_vectors_of_the_plain_one(
    http: httpx.Client, coding: str, compress: Callable[[bytes], bytes]
) -> None:
    response = post(http, compress(BODY), coding)
    assert response.status_code == 200, response.text
    assert response.json() == http.post("/v1/embeddings", json=REQUEST).json()


def test_a_body_that_expands_past_the_limit_is_refused_before_it_does(
    http: httpx.Client,
) -> None:
    """17 MiB of spaces (past the 16 MiB default) in 17 KB of gzip: refused at the limit."""
    bomb = gzip.compress(BODY[:-1] + b" " * (17 * 2**20) + b"}")
    assert len(bomb) < 100_000
    error = assert_error(post(http, bomb, "gzip"), 413, code="request_too_large")
    assert "decompressed" in error["message"]


@pytest.mark.parametrize(
    ("content", "names"),
    [
        (BODY, "not valid gzip"),  # labelled gzip but sent plain
        (gzip.compress(BODY)[:-12], "ends too early"),
        (b"\x1f\x8b" + b"\x00" * 20, "not valid gzip"),
    ],
    ids=["plain", "truncated", "garbage"],
)
def test_a_body_that_is_not_what_its_coding_says_is_a_400(
    http: httpx.Client, content: bytes, names: str
) -> None:
    error = assert_error(post(http, content, "gzip"), 400, code="invalid_value")
    assert names in error["message"]
