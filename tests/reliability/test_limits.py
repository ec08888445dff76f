"""Every request limit: each breach is a 400 or 413 naming the limit and the setting that raises it.

Limits are set small on a fake model (ctx_len 16, 8 dimensions) so each can be hit cheaply;
a 100 MB string shows that the character pre-limit refuses before any tokenising.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ember.settings import ServerSettings
from tests.reliability.expect import assert_error, metric
from tests.support.models import write_fake_model
from tests.support.server import RunningServer, serve_in_thread

MODEL = "tiny"
WIDE = "wide"  # 65,536 dimensions: one vector and its JSON take about 1.5 MB
CLS, SEP, HELLO = 2, 3, 12  # ids in the tiny tokenizer's vocabulary


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    write_fake_model(folder, MODEL)
    write_fake_model(folder, WIDE, dimensions=65_536)
    return folder


@pytest.fixture(scope="module")
def strict(models_dir: Path) -> Iterator[RunningServer]:
    """Small limits: 4 inputs, 20 tokens, 60 characters per input, 4 KiB bodies, 1 MB."""
    settings = ServerSettings(
        home=models_dir.parent,
        models_dir=models_dir,
        max_inputs_per_request=4,
        max_tokens_per_request=20,
        max_input_chars=60,
        max_body_bytes=4096,
        max_request_memory_mb=1,
    )
    with serve_in_thread(settings) as running:
        yield running


@pytest.fixture
def http(strict: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=strict.base_url, timeout=30) as client:
        yield client


def embed(http: httpx.Client, value: Any, **extra: Any) -> httpx.Response:
    return http.post("/v1/embeddings", json={"model": MODEL, "input": value, **extra})


def test_default_limits_are_openais() -> None:
    settings = ServerSettings()
    assert settings.max_inputs_per_request == 2048
    assert settings.max_tokens_per_request == 300_000
    assert settings.max_body_bytes == 16 * 1024 * 1024


def test_default_input_count_limit_is_enforced(models_dir: Path) -> None:
    settings = ServerSettings(home=models_dir.parent, models_dir=models_dir)
    with (
        serve_in_thread(settings) as running,
        httpx.Client(base_url=running.base_url, timeout=60) as client,
    ):
        assert embed(client, ["a"] * 2048).status_code == 200
        error = assert_error(embed(client, ["a"] * 2049), 400, "limit_exceeded")
    assert "2049" in error["message"]
    assert "at most 2048" in error["message"]


def test_requests_within_every_limit_are_served(http: httpx.Client) -> None:
    response = embed(http, ["hello world"] * 4)  # 4 inputs, 16 tokens
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 4
    assert embed(http, "a " * 14).status_code == 200  # exactly 16 tokens: the model's limit


@pytest.mark.parametrize(
    "value",
    [["hello"] * 5, [[CLS, HELLO, SEP]] * 5],
    ids=["texts", "token-arrays"],
)
def test_too_many_inputs(http: httpx.Client, value: Any) -> None:
    error = assert_error(embed(http, value), 400, "limit_exceeded")
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "input"
    assert "5" in error["message"]
    assert "at most 4" in error["message"]
    assert "EMBER_MAX_INPUTS_PER_REQUEST" in error["message"]


@pytest.mark.parametrize(
    "value",
    [["hello world hello world hello"] * 3, [[CLS, *[HELLO] * 5, SEP]] * 3],
    ids=["texts", "token-arrays"],
)
def test_too_many_tokens_in_one_request(http: httpx.Client, value: Any) -> None:
    error = assert_error(embed(http, value), 400, "limit_exceeded")
    assert error["param"] == "input"
    assert "21" in error["message"]
    assert "at most 20" in error["message"]
    assert "EMBER_MAX_TOKENS_PER_REQUEST" in error["message"]


@pytest.mark.parametrize(
    "value", ["a " * 15, [CLS, *[HELLO] * 15, SEP]], ids=["text", "token-array"]
)
def test_input_longer_than_the_model_takes(http: httpx.Client, value: Any) -> None:
    error = assert_error(embed(http, value), 400, "context_length_exceeded")
    assert error["param"] == "input"
    assert "17 tokens" in error["message"]
    assert "at most 16" in error["message"]
    assert "truncate" in error["message"]
    truncated = embed(http, value, truncate=True)
    assert truncated.status_code == 200, truncated.text
    assert truncated.json()["usage"]["prompt_tokens"] == 16


def test_input_with_too_many_characters(http: httpx.Client) -> None:
    error = assert_error(embed(http, ["hello", "x" * 61]), 400, "limit_exceeded")
    assert error["param"] == "input"
    assert "Input 1 has 61 characters" in error["message"]
    assert "at most 60" in error["message"]
    assert "EMBER_MAX_INPUT_CHARS" in error["message"]


def test_request_needing_more_memory_than_allowed_is_refused_before_any_work(
    strict: RunningServer, http: httpx.Client
) -> None:
    computed = metric(strict.base_url, "ember_batch_sequences_count")
    error = assert_error(
        http.post("/v1/embeddings", json={"model": WIDE, "input": "hello"}), 400, "limit_exceeded"
    )
    assert error["param"] == "input"
    assert "1.5 MB" in error["message"]
    assert "at most 1 MB" in error["message"]
    assert "EMBER_MAX_REQUEST_MEMORY_MB" in error["message"]
    assert metric(strict.base_url, "ember_batch_sequences_count") == computed  # no engine call
    assert embed(http, ["hello"] * 4).status_code == 200  # 8 dimensions fit easily


def test_declared_body_over_the_limit_is_refused_before_it_is_read(
    strict: RunningServer,
) -> None:
    """A client announcing 100 MB gets 413 without sending them."""
    port = int(strict.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{"
        )
        answer = b""
        while not answer.endswith(b"}}") and (chunk := conn.recv(65536)):
            answer += chunk
    text = answer.decode("latin-1")
    assert text.startswith("HTTP/1.1 413"), text
    assert "EMBER_MAX_BODY_BYTES" in text


def test_streamed_body_over_the_limit_is_refused(http: httpx.Client) -> None:
    """Without Content-Length (chunked), the body is counted as it arrives."""
    payload = json.dumps({"model": MODEL, "input": ["hello"] * 2000}).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(payload), 1024):
            yield payload[start : start + 1024]

    response = http.post(
        "/v1/embeddings", content=chunks(), headers={"Content-Type": "application/json"}
    )
    error = assert_error(response, 413, "request_too_large")
    assert error["type"] == "invalid_request_error"
    assert "4096 bytes" in error["message"]
    assert "EMBER_MAX_BODY_BYTES" in error["message"]


def test_a_100_mb_string_is_refused_by_the_character_limit_without_tokenising(
    models_dir: Path,
) -> None:
    """Bodies up to 256 MB are accepted here, so only the character pre-limit can stop it.

    Tokenising 100 MB would take tens of seconds; the bound is generous, not a benchmark.
    """
    settings = ServerSettings(
        home=models_dir.parent,
        models_dir=models_dir,
        max_body_bytes=256 * 1024 * 1024,
        max_input_chars=1000,
    )
    body = b'{"model": "tiny", "input": "' + b"word " * 20_000_000 + b'"}'
    with serve_in_thread(settings) as running, httpx.Client(timeout=60) as client:
        started = time.monotonic()
        response = client.post(
            f"{running.base_url}/v1/embeddings",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        elapsed = time.monotonic() - started
    error = assert_error(response, 400, "limit_exceeded")
    assert "100000000 characters" in error["message"]
    assert "EMBER_MAX_INPUT_CHARS" in error["message"]
    assert elapsed < 10, f"refusing a 100 MB string took {elapsed:.1f} s"
