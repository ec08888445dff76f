"""Model ids `ember models add` refuses because no listing or client could use them well."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gguf_files import convert_folder, write_tiny_bert_folder


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sources")
    bert = write_tiny_bert_folder(folder / "tiny-bert", seed=17)
    return convert_folder(bert.path, folder / "tiny-bert.gguf")


@pytest.fixture(autouse=True)
def _no_stray_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("EMBER_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("model_id", "problem"),
    [
        ("two\nlines", "holds a control character"),  # `models list` printed it on two lines
        ("tab\there", "holds a control character"),
        (" padded", "starts or ends with a space"),  # clients sending "padded" got a 404
        ("padded ", "starts or ends with a space"),
    ],
)
def test_an_id_with_control_characters_or_edge_spaces_is_refused(
    gguf: Path, tmp_path: Path, model_id: str, problem: str
) -> None:
    models_dir = tmp_path / "models"
    added = subprocess.run(
        [sys.executable, "-m", "ember", "models", "add", str(gguf), "--id", model_id,
         "--models-dir", str(models_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert added.returncode == 1, added.stdout + added.stderr
    assert added.stderr.startswith(f"Error: the model id {model_id!r} {problem}")
    assert len(added.stderr.splitlines()) == 1
    assert not models_dir.exists() or list(models_dir.iterdir()) == []
