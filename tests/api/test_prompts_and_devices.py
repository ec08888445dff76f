"""Prompts chosen by input_type, and the GPU setting falling back to the CPU with a log line."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import httpx
import pytest
from tokenizers import Tokenizer

from ember.models.settings import read_settings, write_settings
from ember.settings import ServerSettings
from tests.support.models import write_fake_model
from tests.support.server import serve_in_thread


def vector(client: httpx.Client, model: str, text: str | list[int], **extra: object) -> list[float]:
    response = client.post("/v1/embeddings", json={"model": model, "input": text, **extra})
    assert response.status_code == 200, response.text
    embedding: list[float] = response.json()["data"][0]["embedding"]
    return embedding


def test_input_type_applies_the_models_prompt(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    prompts = {"search_query": "hello ", "search_document": "python "}
    write_fake_model(models_dir, "prompted", prompts=prompts, default_prompt="search_document")
    write_fake_model(models_dir, "plain")
    settings = ServerSettings(home=tmp_path, models_dir=models_dir)
    with serve_in_thread(settings) as running, httpx.Client(base_url=running.base_url) as client:
        assert vector(client, "prompted", "world", input_type="query") == vector(
            client, "plain", "hello world"
        )
        assert vector(client, "prompted", "world", input_type="search_query") == vector(
            client, "plain", "hello world"
        )
        assert vector(client, "prompted", "world") == vector(client, "plain", "python world")
        assert vector(client, "plain", "world", input_type="query") == vector(
            client, "plain", "world"
        )


def test_token_ids_get_the_prompt_their_text_would(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    prompts = {"search_query": "hello ", "search_document": "python ", "glued": "hello"}
    folder = write_fake_model(
        models_dir, "prompted", prompts=prompts, default_prompt="search_document"
    )
    write_fake_model(models_dir, "glued", prompts={"glued": "hello"}, default_prompt="glued")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    text = "the quick lazy dog"
    ids = tokenizer.encode(text).ids
    bare = tokenizer.encode(text, add_special_tokens=False).ids
    settings = ServerSettings(home=tmp_path, models_dir=models_dir)
    with serve_in_thread(settings) as running, httpx.Client(base_url=running.base_url) as client:
        # The fake engine hashes the ids it is given: equal vectors, equal ids.
        assert vector(client, "prompted", ids) == vector(client, "prompted", text)
        assert vector(client, "prompted", bare) == vector(client, "prompted", text)
        for input_type in ("query", "search_query", "document"):
            assert vector(client, "prompted", ids, input_type=input_type) == vector(
                client, "prompted", text, input_type=input_type
            )
        # Ids that already carry the prompt (the client tokenised "hello " + text) keep it
        # once, wrapped in the special tokens or bare.
        for carrying in (
            tokenizer.encode("hello " + text),
            tokenizer.encode("hello " + text, add_special_tokens=False),
        ):
            assert vector(client, "prompted", carrying.ids, input_type="query") == vector(
                client, "prompted", text, input_type="query"
            )
        # "hello" + "the" tokenises as "hellothe": no ids say that, so the ids are refused.
        for model, extra, param in [
            ("prompted", {"input_type": "glued"}, "input_type"),
            ("glued", {}, "input"),
        ]:
            response = client.post("/v1/embeddings", json={"model": model, "input": ids, **extra})
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert (error["type"], error["param"]) == ("invalid_request_error", param)
            assert "Send the input as text instead" in error["message"]
        assert vector(client, "glued", text, input_type="glued")


def test_gpu_layers_without_a_gpu_fall_back_to_cpu_with_a_log_line(
    default_models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models_dir = tmp_path / "models"
    folder = models_dir / "all-MiniLM-L6-v2"
    shutil.copytree(default_models_dir / "all-MiniLM-L6-v2", folder)
    write_settings(folder, read_settings(folder).model_copy(update={"ngl": 99}))
    settings = ServerSettings(home=tmp_path, models_dir=models_dir)
    with (
        caplog.at_level(logging.WARNING, logger="ember"),
        serve_in_thread(settings) as running,
        httpx.Client(base_url=running.base_url, timeout=60) as client,
    ):
        assert len(vector(client, "all-MiniLM-L6-v2", "hello")) == 384
    assert any("running on CPU" in record.getMessage() for record in caplog.records)
