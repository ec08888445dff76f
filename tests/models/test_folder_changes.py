"""A running server follows `ember models rm`, `add` and `pull` done beside it, no restart."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ember.settings import ServerSettings
from tests.support.gguf_files import write_tiny_bert_folder
from tests.support.models import write_fake_model
from tests.support.server import serve_in_thread


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny BERT folders with the same settings and different weights."""
    folder = tmp_path_factory.mktemp("sources")
    write_tiny_bert_folder(folder / "bert-a", seed=7)
    write_tiny_bert_folder(folder / "bert-b", seed=8)
    return folder


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def http(models_dir: Path) -> Iterator[httpx.Client]:
    settings = ServerSettings(home=models_dir.parent, models_dir=models_dir)
    with (
        serve_in_thread(settings) as running,
        httpx.Client(base_url=running.base_url, timeout=60) as client,
    ):
        yield client


def models_cli(models_dir: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ember", "models", *args, "--models-dir", str(models_dir)],
        capture_output=True,
        text=True,
        env={name: value for name, value in os.environ.items() if not name.startswith("EMBER_")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def vector(http: httpx.Client, model: str) -> list[float]:
    response = http.post("/v1/embeddings", json={"model": model, "input": "the quick brown fox"})
    assert response.status_code == 200, response.text
    embedding: list[float] = response.json()["data"][0]["embedding"]
    return embedding


def test_a_removed_model_is_gone_at_once(
    http: httpx.Client, models_dir: Path, sources: Path
) -> None:
    models_cli(models_dir, "add", str(sources / "bert-a"), "--id", "bert")
    vector(http, "bert")  # loaded and serving
    models_cli(models_dir, "rm", "bert")
    response = http.post("/v1/embeddings", json={"model": "bert", "input": "hello"})
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "model_not_found"
    assert http.get("/v1/models/bert").status_code == 404


@pytest.mark.parametrize("listed_between", [False, True])
def test_a_model_removed_and_added_again_serves_its_new_weights(
    http: httpx.Client, models_dir: Path, sources: Path, listed_between: bool
) -> None:
    models_cli(models_dir, "add", str(sources / "bert-b"), "--id", "reference")
    expected = vector(http, "reference")
    models_cli(models_dir, "add", str(sources / "bert-a"), "--id", "bert")
    old = vector(http, "bert")
    assert old != expected
    models_cli(models_dir, "rm", "bert")
    if listed_between:
        http.get("/v1/models")
    models_cli(models_dir, "add", str(sources / "bert-b"), "--id", "bert")
    assert vector(http, "bert") == expected
    http.get("/v1/models")  # a rescan keeps the new model
    assert vector(http, "bert") == expected


def test_a_model_added_while_serving_is_listed_and_serves(
    http: httpx.Client, models_dir: Path, sources: Path
) -> None:
    assert http.get("/v1/models").json()["data"] == []
    models_cli(models_dir, "add", str(sources / "bert-a"), "--id", "late")
    assert [card["id"] for card in http.get("/v1/models").json()["data"]] == ["late"]
    assert len(vector(http, "late")) == 32


def test_a_renamed_model_folder_keeps_serving_from_its_new_place(
    http: httpx.Client, models_dir: Path
) -> None:
    write_fake_model(models_dir, "alpha")
    http.get("/v1/models")  # scanned where it was
    (models_dir / "alpha").rename(models_dir / "renamed")
    response = http.post("/v1/embeddings", json={"model": "alpha", "input": "hello"})
    assert response.status_code == 200, response.text
    card = http.get("/v1/models/alpha").json()
    assert card["status"] == "loaded"
    assert card["created"] > 0


def test_a_model_added_under_anothers_alias_takes_the_name_at_once(
    http: httpx.Client, models_dir: Path
) -> None:
    write_fake_model(models_dir, "big", aliases=["short"])
    assert len(vector(http, "short")) == 8
    write_fake_model(models_dir, "short", dimensions=4)
    # A model's own id wins over another's alias, listed or not.
    assert len(vector(http, "short")) == 4
