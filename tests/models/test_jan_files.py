"""Jan's model.yml files as Jan, Cortex or a hand edit write them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.gguf_files import convert_folder, write_jan_model, write_tiny_bert_folder
from tests.support.process import run_ember


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sources")
    bert = write_tiny_bert_folder(folder / "tiny-bert", seed=5)
    return convert_folder(bert.path, folder / "tiny-bert.gguf")


pytestmark = pytest.mark.usefixtures("no_ember_environment")


def test_whole_numbers_written_as_floats_are_taken(gguf: Path, tmp_path: Path) -> None:
    # isinstance(48.0, int) is False: ctx_len and ngl so written were dropped for the defaults.
    folder = write_jan_model(
        tmp_path / "jan", "floaty", gguf, embedding=True, ctx_len=48.0, ngl=0.0
    )
    models_dir = tmp_path / "models"
    added = run_ember("models", "add", str(folder), "--models-dir", str(models_dir))
    assert added.returncode == 0, added.stderr
    settings = json.loads((models_dir / "floaty" / "model.json").read_text(encoding="utf-8"))
    assert (settings["ctx_len"], settings["ngl"]) == (48, 0)


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [("ctx_len", 8.5, "8.5"), ("ngl", True, "true"), ("ctx_len", "4096", '"4096"')],
)
def test_a_value_that_is_not_a_whole_number_is_refused_by_field_and_file(
    gguf: Path, tmp_path: Path, field: str, value: object, shown: str
) -> None:
    # ngl: true became 1 GPU layer, ctx_len: 8.5 the model's own length, without a word.
    folder = write_jan_model(tmp_path / "jan", "odd", gguf, embedding=True, **{field: value})
    models_dir = tmp_path / "models"
    added = run_ember("models", "add", str(folder), "--models-dir", str(models_dir))
    assert added.returncode == 1, added.stdout + added.stderr
    assert added.stderr == (
        f"Error: {folder / 'model.yml'}: {field} should be a whole number, not {shown}\n"
    )
    assert not models_dir.exists() or list(models_dir.iterdir()) == []


def test_a_files_key_that_is_not_a_list_is_an_error_line(gguf: Path, tmp_path: Path) -> None:
    folder = write_jan_model(tmp_path / "jan", "numbered", gguf, embedding=True, files=5)
    added = run_ember("models", "add", str(folder), "--models-dir", str(tmp_path / "models"))
    assert added.returncode == 1, added.stdout + added.stderr
    assert (
        added.stderr == f"Error: {folder / 'model.yml'}: files should be a list of paths, not 5\n"
    )


def test_a_files_key_naming_one_file_is_read_as_a_list(gguf: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cortex" / "one-file"
    folder.mkdir(parents=True)
    (folder / "weights.gguf").write_bytes(gguf.read_bytes())
    (folder / "other.gguf").write_bytes(gguf.read_bytes())  # two: the folder alone is unclear
    (folder / "model.yml").write_text("files: weights.gguf\nembedding: true\n", encoding="utf-8")
    added = run_ember("models", "add", str(folder), "--models-dir", str(tmp_path / "models"))
    assert added.returncode == 0, added.stderr
    assert (tmp_path / "models" / "one-file" / "weights.gguf").is_file()
