"""`ember models add` of a Hugging Face folder whose files are broken: one error line naming
the file, status 1, and nothing registered or staged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from ember.cli import main
from tests.support.gguf_files import write_tiny_bert_folder

Breakage = Callable[[Path], None]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert_folder(tmp_path_factory.mktemp("sources") / "tiny-bert", seed=11).path


@pytest.fixture(autouse=True)
def _no_stray_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("EMBER_")]:
        monkeypatch.delenv(name)


def write(name: str, content: bytes | str) -> Breakage:
    def breakage(folder: Path) -> None:
        data = content.encode() if isinstance(content, str) else content
        (folder / name).write_bytes(data)

    return breakage


def change_weights(change: Callable[[dict[str, np.ndarray]], None]) -> Breakage:
    def breakage(folder: Path) -> None:
        weights = load_file(str(folder / "model.safetensors"))
        change(weights)
        save_file(weights, str(folder / "model.safetensors"))

    return breakage


def change_config(**changes: object) -> Breakage:
    def breakage(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        (folder / "config.json").write_text(json.dumps({**config, **changes}), encoding="utf-8")

    return breakage


def remove(name: str) -> Breakage:
    return lambda folder: (folder / name).unlink()


def both(first: Breakage, second: Breakage) -> Breakage:
    def breakage(folder: Path) -> None:
        first(folder)
        second(folder)

    return breakage


QUERY = "encoder.layer.0.attention.self.query.weight"

BROKEN: dict[str, tuple[Breakage, str]] = {
    "config not UTF-8": (write("config.json", b'\xff\xfe{"a": 1}'), "cannot read config.json"),
    "config an array": (write("config.json", "[1, 2]"), "config.json should hold a JSON object"),
    "modules an object": (write("modules.json", '{"a": 1}'), "modules.json should be a list"),
    "modules of numbers": (write("modules.json", "[1]"), "modules.json should be a list"),
    "pooling config an array": (
        write("1_Pooling/config.json", "[]"), "1_Pooling/config.json should hold a JSON object",
    ),
    "prompts an array": (
        write("config_sentence_transformers.json", '{"prompts": ["query: "]}'),
        "config_sentence_transformers.json: prompts should be an object",
    ),
    "default prompt an array": (
        write("config_sentence_transformers.json", '{"prompts": {}, "default_prompt_name": ["q"]}'),
        None,  # ignored, as a name no prompt has is: the model adds
    ),
    "positions a string": (
        both(change_config(max_position_embeddings="many"), remove("sentence_bert_config.json")),
        "config.json: max_position_embeddings should be a positive whole number, not \"many\"",
    ),
    "hidden size a string": (change_config(hidden_size="32"), "config field 'hidden_size'"),
    "weights truncated": (
        write("model.safetensors", b"\x10\x00"), "model.safetensors is not a readable safetensors",
    ),
    "a weight missing": (
        change_weights(lambda weights: weights.pop(QUERY)), f"missing tensor '{QUERY}'"
    ),
    "a weight misshapen": (
        change_weights(lambda weights: weights.update({QUERY: np.zeros((3, 3), np.float32)})),
        "has shape (3, 3)",
    ),
    "tokenizer broken": (write("tokenizer.json", "{broken"), "cannot read tokenizer"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_file_is_one_error_line(source: Path, tmp_path: Path, case: str) -> None:
    breakage, message = BROKEN[case]
    folder = tmp_path / "broken"
    shutil.copytree(source, folder)
    breakage(folder)
    models_dir = tmp_path / "models"
    result = CliRunner().invoke(
        main, ["models", "add", str(folder), "--models-dir", str(models_dir)],
        catch_exceptions=False,
    )  # fmt: skip
    if message is None:
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 1, result.output
    error = result.output.splitlines()[-1]
    assert error.startswith("Error: ")
    assert message in error
    assert ".add-" not in error  # the user's file, not the staging copy's path
    assert list(models_dir.iterdir()) == []


def test_a_broken_tokenizer_fails_the_add_not_every_request(source: Path, tmp_path: Path) -> None:
    # The tokenizer was first read when serving: "ready" at add, then 503 on every request.
    folder = tmp_path / "broken"
    shutil.copytree(source, folder)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": 5}', encoding="utf-8")
    added = subprocess.run(
        [sys.executable, "-m", "ember", "models", "add", str(folder),
         "--models-dir", str(tmp_path / "models")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert added.returncode == 1, added.stdout + added.stderr
    assert "Traceback" not in added.stderr
    assert "ready" not in added.stdout
    assert added.stderr.startswith("Error: broken: cannot read tokenizer tokenizer.json")
