"""`ember embed` beside a damaged checkpoint: one error line naming it and --restart, not a
traceback, whether a run resumes from it or is stopped while it is still there."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ember.bulk.checkpoint import checkpoint_path
from ember.cli.interrupts import Interrupted
from tests.bulk.conftest import Invoke
from tests.support.models import WORDS, write_fake_model

FAILING_MODEL = "fake-failing"
EMBED_MODULE = sys.modules["ember.cli.embed"]  # the name ember.cli.embed is the command
JUMPS = 4 + WORDS.index("jumps")  # its id in the tiny tokenizer, after four special tokens


def _cut_short(text: str) -> bytes:
    return text[: len(text) // 2].encode()


def _with(**fields: Any) -> Callable[[str], bytes]:
    def damage(text: str) -> bytes:
        return json.dumps({**json.loads(text), **fields}).encode()

    return damage


DAMAGES: dict[str, Callable[[str], bytes]] = {
    "cut-short": _cut_short,
    "garbage-bytes": lambda _: b"\x89\xff\x00garbage",
    "nested-brackets": lambda _: b"[" * 100_000,
    "writer-null": _with(writer=None),
    "identity-list": _with(identity=[1]),
    "rows-done-text": _with(rows_done="2"),
    "rows-done-past-total": _with(rows_done=9),
    "writer-without-offset": _with(writer={}),
}


@pytest.fixture
def stopped(tmp_path: Path, fake_models_dir: Path, invoke: Invoke) -> list[str | Path]:
    """The args of a run that stopped with 2 of its 4 rows saved (an engine fault on row 3)."""
    write_fake_model(fake_models_dir, FAILING_MODEL, fake={"fail_token": JUMPS})
    source = tmp_path / "input.txt"
    source.write_text("hello world\nthe lazy dog\nthe fox jumps\nlast line\n")
    args: list[str | Path] = ["embed", source, "-m", FAILING_MODEL, "-o", tmp_path / "v.jsonl",
                              "--models-dir", fake_models_dir, "--chunk-rows", "2"]  # fmt: skip
    assert invoke(*args).exit_code == 1
    assert checkpoint_path(tmp_path / "v.jsonl").is_file()
    return args


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_resume_from_a_damaged_checkpoint_is_one_line_naming_it(
    tmp_path: Path, invoke: Invoke, stopped: list[str | Path], damage: str
) -> None:
    # JSON of the right fields but not their kinds was a traceback (AttributeError,
    # ValueError, KeyError, TypeError), as was '[[[…' (RecursionError); a null writer state
    # resumed into a fresh output that lacked the rows before it.
    saved_at = checkpoint_path(tmp_path / "v.jsonl")
    saved_at.write_bytes(DAMAGES[damage](saved_at.read_text()))

    failed = invoke(*stopped)
    assert isinstance(failed.exception, SystemExit), failed.exception
    assert failed.exit_code == 1
    assert len(failed.output.strip().splitlines()) == 1, failed.output
    assert failed.output.startswith("Error: The ")
    assert "v.jsonl.ember-" in failed.output
    assert failed.output.rstrip().endswith("; start over with --restart.")

    restarted = invoke(*stopped, "--restart")  # gets past the checkpoint, to the engine fault
    assert "failed on rows 2-3" in restarted.output, restarted.output


def _stop_loading(*_: object, **__: object) -> None:
    raise Interrupted(signal.SIGTERM)


@pytest.mark.parametrize("damage", ["cut-short", "intact"])
def test_a_restart_stopped_before_its_first_save_reports_no_rows(
    tmp_path: Path,
    invoke: Invoke,
    stopped: list[str | Path],
    damage: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Stopped during the count or the model load, --restart left the replaced run's
    # checkpoint in place, and the interrupt path read it: a damaged one was a
    # CheckpointBroken traceback, an intact one said its rows were saved (their output was
    # gone already).
    saved_at = checkpoint_path(tmp_path / "v.jsonl")
    if damage == "cut-short":
        saved_at.write_bytes(_cut_short(saved_at.read_text()))
    monkeypatch.setattr(EMBED_MODULE, "load_model", _stop_loading)

    stopped_run = invoke(*stopped, "--restart")
    assert stopped_run.exit_code == 128 + signal.SIGTERM, stopped_run.output
    assert stopped_run.output.strip().splitlines() == [
        "Interrupted: 0 rows are saved; run the same command to resume."
    ]
    assert not saved_at.exists()


def test_a_run_stopped_before_it_reads_a_damaged_checkpoint_says_so_in_one_line(
    tmp_path: Path, invoke: Invoke, stopped: list[str | Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A signal that lands before the run has read (and refused) its checkpoint: the
    # interrupt path reads it to say how many rows are saved, and raised from there.
    saved_at = checkpoint_path(tmp_path / "v.jsonl")
    saved_at.write_bytes(b"\x89\xff\x00garbage")
    monkeypatch.setattr(EMBED_MODULE, "run_job", _stop_loading)

    stopped_run = invoke(*stopped)
    assert stopped_run.exit_code == 128 + signal.SIGTERM, stopped_run.output
    [line] = stopped_run.output.strip().splitlines()
    assert line.startswith("Interrupted. The checkpoint v.jsonl.ember-checkpoint.json cannot")
    assert line.endswith("; start over with --restart.")
