"""`ember models add FOLDER --quantize int8`: an int8 graph served, its measured cosine shown."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
from click.testing import CliRunner

from ember.cli import main
from ember.engines.cores import available_cores
from ember.models.loader import load_model
from ember.models.settings import read_settings
from ember.settings import ServerSettings
from tests.support.server import serve_in_thread

SOURCE_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling",
)


def test_int8_variant_is_registered_served_and_reported(
    default_models_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "minilm"
    source.mkdir()
    original = default_models_dir / "all-MiniLM-L6-v2"
    for name in SOURCE_FILES:
        if (original / name).is_dir():
            shutil.copytree(original / name, source / name)
        else:
            shutil.copy(original / name, source / name)
    models_dir = tmp_path / "models"
    result = CliRunner().invoke(
        main,
        [
            "models",
            "add",
            str(source),
            "--id",
            "minilm-int8",
            "--quantize",
            "int8",
            "--models-dir",
            str(models_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    settings = ServerSettings(home=tmp_path, models_dir=models_dir)
    fp32_settings = ServerSettings(home=tmp_path, models_dir=default_models_dir)
    texts = ["The quick brown fox jumps over the lazy dog", "What is Python?", "Hi"]
    with serve_in_thread(settings) as running, httpx.Client(base_url=running.base_url) as client:
        card = client.get("/v1/models/minilm-int8").json()
        int8 = client.post("/v1/embeddings", json={"model": "minilm-int8", "input": texts})
    with (
        serve_in_thread(fp32_settings) as running,
        httpx.Client(base_url=running.base_url) as client,
    ):
        fp32 = client.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": texts})
    assert card["quantize"] == "int8"
    assert card["int8_min_cosine"] >= 0.999
    left = np.asarray([item["embedding"] for item in int8.json()["data"]])
    right = np.asarray([item["embedding"] for item in fp32.json()["data"]])
    assert np.sum(left * right, axis=1).min() >= 0.999


def test_int8_graphs_run_one_lane_per_core(default_models_dir: Path, tmp_path: Path) -> None:
    folder = default_models_dir / "all-MiniLM-L6-v2"
    settings = read_settings(folder).model_copy(update={"quantize": "int8"})
    loaded = load_model(folder, settings)  # the fp32 graph stands in: lanes follow the setting
    try:
        assert loaded.engine.lanes == available_cores()
    finally:
        loaded.engine.close()
