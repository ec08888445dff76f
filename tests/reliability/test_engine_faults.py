"""An engine that raises mid-batch under concurrent load: 503 for that batch, reload, recovery."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ember.settings import ServerSettings
from tests.reliability.expect import assert_error
from tests.support.models import write_fake_model
from tests.support.server import RunningServer, serve_in_thread

FAIL_WORD = "lazy"  # the fake engine raises on any batch holding this word's token id
FAIL_TOKEN = 10


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    models_dir = tmp_path / "models"
    # A 5-token budget: every input (5 tokens) is an engine batch of its own.
    write_fake_model(
        models_dir,
        "flaky",
        ubatch_size=5,
        fake={"fail_token": FAIL_TOKEN, "delay_seconds": 0.02},
    )
    # A 64-token budget: inputs of different requests share batches.
    write_fake_model(models_dir, "flaky-shared", fake={"fail_token": FAIL_TOKEN})
    with serve_in_thread(ServerSettings(home=tmp_path, models_dir=models_dir)) as running:
        yield running


def embed_all(base_url: str, texts: list[str], model: str = "flaky") -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/embeddings", json={"model": model, "input": text})
                    for text in texts
                )
            )

    return asyncio.run(run())


def test_a_faulty_batch_fails_alone_and_the_model_recovers(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ember.models.registry")
    clean = [f"hello world {word}" for word in ("dog", "fox", "python", "the", "quick")] * 4
    texts = [f"the {FAIL_WORD} dog"] * 10 + clean
    responses = embed_all(server.base_url, texts)

    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        for text, response in zip(texts, responses, strict=True):
            if FAIL_WORD in text:
                error = assert_error(response, 503, "engine_failure")
                assert "flaky" in error["message"]
                assert "retry" in error["message"]
                continue
            # Work in other batches, queued while the engine failed and was reloaded, is served.
            assert response.status_code == 200, response.text
            alone = http.post("/v1/embeddings", json={"model": "flaky", "input": text})
            assert response.json()["data"] == alone.json()["data"]
        assert http.get("/health").status_code == 200
    loads = [
        record for record in caplog.records if record.getMessage().startswith("loaded flaky in")
    ]
    assert len(loads) >= 2, "the model was not reloaded after the fault"


def test_requests_sharing_a_faulty_batch_get_503_and_succeed_on_retry(
    server: RunningServer,
) -> None:
    clean = [f"hello world {word}" for word in ("dog", "fox", "python", "the", "quick")] * 4
    texts = [f"the {FAIL_WORD} dog"] * 5 + clean
    responses = embed_all(server.base_url, texts, model="flaky-shared")
    failed = []
    for text, response in zip(texts, responses, strict=True):
        if response.status_code != 200:
            assert_error(response, 503, "engine_failure")
            failed.append(text)
        assert FAIL_WORD not in text or response.status_code == 503
    retry = [text for text in failed if FAIL_WORD not in text]
    retried = embed_all(server.base_url, retry, model="flaky-shared")
    assert [response.status_code for response in retried] == [200] * len(retry)
