"""Models that cannot embed, fail, or are broken: clear errors, and the server keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ember.settings import ServerSettings
from tests.support.models import write_fake_model
from tests.support.server import RunningServer, serve_in_thread

FAIL_TOKEN = 6  # "fox" in the tiny tokenizer's vocabulary


@pytest.fixture(scope="module")
def faulty_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    models_dir = tmp_path_factory.mktemp("models")
    write_fake_model(models_dir, "healthy")
    write_fake_model(models_dir, "chat-model", embedding=False)
    write_fake_model(models_dir, "stale-instance", fake={"embedding_mode": "off_until_reload"})
    write_fake_model(models_dir, "never-embeds", fake={"embedding_mode": "off"})
    write_fake_model(models_dir, "flaky", fake={"fail_token": FAIL_TOKEN})
    write_fake_model(models_dir, "slow", fake={"delay_seconds": 0.2})
    missing = write_fake_model(models_dir, "missing-tokenizer")
    (missing / "tokenizer.json").unlink()
    corrupt = write_fake_model(models_dir, "corrupt-settings")
    (corrupt / "model.json").write_text('{"id": "corrupt-settings", "engine": ', encoding="utf-8")
    invalid = write_fake_model(models_dir, "invalid-settings", ctx_len=-3)
    assert invalid.is_dir()
    settings = ServerSettings(home=tmp_path_factory.mktemp("home"), models_dir=models_dir)
    with serve_in_thread(settings) as running:
        yield running


@pytest.fixture
def http(faulty_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=faulty_server.base_url, timeout=30) as client:
        yield client


def embed(http: httpx.Client, model: str, text: str = "hello world") -> httpx.Response:
    return http.post("/v1/embeddings", json={"model": model, "input": text})


def test_chat_model_is_refused_as_not_embedding(http: httpx.Client) -> None:
    response = embed(http, "chat-model")
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "Model does not support embeddings",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_embedding",
    }


def test_instance_without_embedding_support_is_reloaded_and_retried(http: httpx.Client) -> None:
    response = embed(http, "stale-instance")
    assert response.status_code == 200
    assert len(response.json()["data"][0]["embedding"]) == 8


def test_instance_that_cannot_embed_after_reload_gets_501(http: httpx.Client) -> None:
    response = embed(http, "never-embeds")
    assert response.status_code == 501
    error = response.json()["error"]
    assert error["message"] == "Embeddings endpoint not available"
    assert error["type"] == "not_implemented_error"
    assert embed(http, "healthy").status_code == 200


def test_engine_fault_fails_its_batch_then_the_model_recovers(http: httpx.Client) -> None:
    failed = embed(http, "flaky", "the quick brown fox")
    assert failed.status_code == 503
    error = failed.json()["error"]
    assert error["code"] == "engine_failure"
    assert error["type"] == "server_error"
    assert "Traceback" not in error["message"]
    assert embed(http, "flaky", "the lazy dog").status_code == 200
    assert embed(http, "healthy").status_code == 200


@pytest.mark.parametrize("model", ["missing-tokenizer", "corrupt-settings", "invalid-settings"])
def test_broken_model_answers_clearly_and_others_keep_serving(
    http: httpx.Client, model: str
) -> None:
    response = embed(http, model)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "model_load_failed"
    assert model in error["message"]
    assert str(Path.home()) not in error["message"] or model in error["message"]
    assert embed(http, "healthy").status_code == 200
    listed = {card["id"]: card for card in http.get("/v1/models").json()["data"]}
    assert listed[model]["status"] == "error"
    assert listed[model]["error"]
    assert listed["healthy"]["status"] in {"ready", "loaded"}


def test_models_listing_shows_flags_and_load_state(http: httpx.Client) -> None:
    embed(http, "healthy")
    cards = {card["id"]: card for card in http.get("/v1/models").json()["data"]}
    assert cards["healthy"]["loaded"] is True
    assert cards["healthy"]["embedding"] is True
    assert cards["healthy"]["dimensions"] == 8
    assert cards["healthy"]["max_tokens"] == 16
    assert cards["chat-model"]["embedding"] is False
    one = http.get("/v1/models/healthy").json()
    assert one["id"] == "healthy"
    assert http.get("/v1/models/unknown").status_code == 404


def test_concurrent_requests_each_get_their_own_vectors(
    faulty_server: RunningServer,
) -> None:
    texts = [f"{word} world" for word in ("hello", "python", "lazy", "dog", "quick", "brown")]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=faulty_server.base_url, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/embeddings", json={"model": "slow", "input": [text, "a"]})
                    for text in texts
                )
            )

    responses = asyncio.run(run())
    with httpx.Client(base_url=faulty_server.base_url, timeout=30) as client:
        for text, response in zip(texts, responses, strict=True):
            assert response.status_code == 200
            alone = embed(client, "slow", text).json()["data"][0]["embedding"]
            assert response.json()["data"][0]["embedding"] == alone
