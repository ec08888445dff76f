"""Adding files reached through symlinks, as a Hugging Face cache snapshot holds them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ember.engines.base import TokenBatch
from ember.models.loader import load_model
from ember.models.settings import read_settings
from tests.support.gguf_files import convert_folder, write_tiny_bert_folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sources")
    bert = write_tiny_bert_folder(folder / "tiny-bert", seed=13)
    convert_folder(bert.path, folder / "tiny-bert.gguf")
    return folder


@pytest.fixture(autouse=True)
def _no_stray_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("EMBER_")]:
        monkeypatch.delenv(name)


def hub_snapshot(folder: Path, cache: Path) -> Path:
    """`folder` laid out as huggingface_hub caches it: files in blobs/, and a snapshot folder
    of relative symlinks to them (`model.safetensors -> ../../blobs/<hash>`)."""
    repo = cache / "models--someone--tiny-bert"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            continue
        relative = path.relative_to(folder)
        blob = repo / "blobs" / f"blob{len(list((repo / 'blobs').iterdir()))}"
        shutil.copy(path, blob)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def ember(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ember", *args], capture_output=True, text=True, timeout=120
    )


def test_a_hugging_face_cache_snapshot_adds_and_serves(sources: Path, tmp_path: Path) -> None:
    # Its relative symlinks were hard-linked as symlinks, dangling in the staging folder:
    # "cannot read config.json: No such file or directory".
    snapshot = hub_snapshot(sources / "tiny-bert", tmp_path / "hub")
    models_dir = tmp_path / "models"
    added = ember("models", "add", str(snapshot), "--id", "cached", "--models-dir", str(models_dir))
    assert added.returncode == 0, added.stderr
    folder = models_dir / "cached"
    assert not any(path.is_symlink() for path in folder.rglob("*"))
    shutil.rmtree(tmp_path / "hub")  # the model keeps its own files
    loaded = load_model(folder, read_settings(folder))
    try:
        vectors = loaded.engine.embed(TokenBatch(loaded.tokenizer.encode(["the lazy dog"])))
    finally:
        loaded.engine.close()
    assert vectors.shape == (1, 32)


def test_a_symlinked_gguf_file_is_taken_not_its_link(sources: Path, tmp_path: Path) -> None:
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "embedder.gguf"
    link.symlink_to(os.path.relpath(sources / "tiny-bert.gguf", link.parent))
    models_dir = tmp_path / "models"
    added = ember("models", "add", str(link), "--models-dir", str(models_dir))
    assert added.returncode == 0, added.stderr
    placed = models_dir / "embedder" / "embedder.gguf"
    assert not placed.is_symlink()
    assert placed.read_bytes() == (sources / "tiny-bert.gguf").read_bytes()
