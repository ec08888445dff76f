"""Ctrl-C during `ember models add`: one line, status 130, and nothing half-added left.

Real `python -m ember` processes get real signals. Where the point of interruption must be
exact (halfway through copying a folder in), a bootstrap pauses the command there and says
so in a marker file, so the signal never races the work it should interrupt.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gguf_files import convert_folder, write_jan_model, write_tiny_bert_folder
from tests.support.process import run_ember

# Runs the CLI with one function wrapped so that its Nth call pauses, after writing a marker.
PAUSED_CLI = """
import importlib, sys, time
from pathlib import Path

module_name, function_name, nth, marker = sys.argv[1:5]
module = importlib.import_module(module_name)
original = getattr(module, function_name)
calls = 0

def paused(*args, **kwargs):
    global calls
    calls += 1
    if calls == int(nth):
        Path(marker).write_text("paused", encoding="utf-8")
        time.sleep(300)
    return original(*args, **kwargs)

setattr(module, function_name, paused)
from ember.cli import main
sys.argv = ["ember", *sys.argv[5:]]
main()
"""


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT folder and a Jan data folder of two GGUF embedding models."""
    folder = tmp_path_factory.mktemp("sources")
    bert = write_tiny_bert_folder(folder / "tiny-bert", seed=3)
    gguf = convert_folder(bert.path, folder / "tiny-bert.gguf")
    for model_id in ("first-embedder", "second-embedder"):
        write_jan_model(folder / "jan", model_id, gguf, embedding=True)
    return folder


pytestmark = pytest.mark.usefixtures("no_ember_environment")


def finish(process: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def paused_add(
    started: list[subprocess.Popen[str]],
    marker: Path,
    pause_in: str,
    nth: int,
    *add_args: str,
) -> subprocess.Popen[str]:
    """`ember models add ADD_ARGS`, paused at the Nth call of pause_in ("module:function")."""
    module_name, function_name = pause_in.split(":")
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSED_CLI, module_name, function_name, str(nth), str(marker),
         "models", "add", *add_args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    started.append(process)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None, finish(process)
        assert time.monotonic() < deadline, "the add never reached its pause"
        time.sleep(0.02)
    return process


def assert_clean_interruption(process: subprocess.Popen[str], models_dir: Path) -> None:
    stdout, stderr = finish(process)
    assert process.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [
        "Interrupted: the model being added was not registered; no partial files are left."
    ]
    assert [path.name for path in models_dir.glob(".*")] == []  # no staging folder


def test_ctrl_c_while_quantising_leaves_nothing(sources: Path, tmp_path: Path) -> None:
    # Unpatched: the signal follows the line printed as the graph build starts; building and
    # quantising take over a second after it, the signal milliseconds.
    models_dir = tmp_path / "models"
    with subprocess.Popen(
        [sys.executable, "-m", "ember", "models", "add", str(sources / "tiny-bert"),
         "--quantize", "int8", "--models-dir", str(models_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as process:  # fmt: skip
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("building the ONNX graph"), line
        process.send_signal(signal.SIGINT)
        assert_clean_interruption(process, models_dir)
    assert list(models_dir.iterdir()) == []
    listed = run_ember("models", "list", "--models-dir", str(models_dir))
    assert listed.stdout.startswith("No models registered"), listed.stdout + listed.stderr


@pytest.mark.parametrize(
    ("pause_in", "nth"),
    [
        ("ember.models.importers:_link_or_copy", 2),  # halfway through copying the folder in
        ("ember.engines.onnx_graphs.quantize:quantize_int8", 1),
    ],
)
def test_ctrl_c_twice_at_any_step_of_a_folder_add_leaves_nothing(
    sources: Path, tmp_path: Path, started: list[subprocess.Popen[str]], pause_in: str, nth: int
) -> None:
    models_dir = tmp_path / "models"
    process = paused_add(
        started, tmp_path / "paused", pause_in, nth,
        str(sources / "tiny-bert"), "--quantize", "int8", "--models-dir", str(models_dir),
    )  # fmt: skip
    assert [path.name.startswith(".add-") for path in models_dir.iterdir()] == [True]
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)  # impatient: the second must not cut the cleanup short
    assert_clean_interruption(process, models_dir)
    assert list(models_dir.iterdir()) == []


def test_ctrl_c_in_a_jan_data_folder_keeps_the_models_already_added(
    sources: Path, tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    models_dir = tmp_path / "models"
    process = paused_add(
        started, tmp_path / "paused", "ember.models.importers:_link_or_copy", 2,
        str(sources / "jan"), "--models-dir", str(models_dir),
    )  # fmt: skip
    process.send_signal(signal.SIGINT)
    assert_clean_interruption(process, models_dir)
    assert [path.name for path in models_dir.iterdir()] == ["first-embedder"]
    shown = run_ember("models", "show", "first-embedder", "--models-dir", str(models_dir))
    assert shown.returncode == 0, shown.stderr
    assert "model.gguf" in shown.stdout


def test_sigterm_during_an_add_exits_143_and_leaves_nothing(
    sources: Path, tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    models_dir = tmp_path / "models"
    process = paused_add(
        started, tmp_path / "paused", "ember.models.importers:_link_or_copy", 1,
        str(sources / "tiny-bert.gguf"), "--models-dir", str(models_dir),
    )  # fmt: skip
    process.send_signal(signal.SIGTERM)
    stdout, stderr = finish(process)
    assert process.returncode == 143, stdout + stderr
    assert stderr.startswith("Interrupted: ")
    assert list(models_dir.iterdir()) == []
