"""The bulk runner on a fake engine: batching, interruption at any chunk, resume and refusal."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.bulk import runner
from ember.bulk.checkpoint import Checkpoint, checkpoint_path, read_checkpoint, save_checkpoint
from ember.bulk.errors import CheckpointMismatch, OutputBusy
from ember.bulk.formats import OutputFormat
from ember.bulk.runner import BulkJob, EmbedOptions, Summary, run_job, token_batches
from ember.bulk.writers import has_partial
from ember.models.loader import LoadedModel, load_model
from ember.models.registry import ModelRegistry
from tests.bulk.conftest import FAKE_MODEL
from tests.support.models import WORDS, write_fake_model

ROWS = 50


class Interrupted(Exception):
    """Stands in for Ctrl-C or a kill in the middle of a chunk."""


class StopAfter:
    """A progress report that interrupts the run once `rows` rows were embedded."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.seen = 0

    def start(self, total_rows: int, done_rows: int) -> None:
        self.seen = done_rows

    def advance(self, rows: int, tokens: int) -> None:
        self.seen += rows
        if self.seen >= self.rows:
            raise Interrupted


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=60), st.integers(8, 200))
def test_token_batches_cover_every_row_once_within_budget(lengths: list[int], budget: int) -> None:
    batches = token_batches(lengths, budget)
    flat = [int(position) for batch in batches for position in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[position] for position in flat] == sorted(lengths)
    for batch in batches:
        longest = max(lengths[position] for position in batch)
        assert len(batch) == 1 or longest * len(batch) <= budget


def write_input(path: Path, rows: int = ROWS) -> None:
    lines = [
        " ".join(WORDS[(row + step) % len(WORDS)] for step in range(row % 7)) for row in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")


def run(models_dir: Path, job: BulkJob, **kwargs: object) -> Summary:
    entry = ModelRegistry(models_dir).find(FAKE_MODEL)
    assert entry.settings is not None
    settings = entry.settings

    def load() -> LoadedModel:
        return load_model(entry.folder, settings)

    return run_job(job, settings, load, **kwargs)  # type: ignore[arg-type]


def make_job(tmp_path: Path, output_format: OutputFormat, **options: object) -> BulkJob:
    return BulkJob(
        input_path=tmp_path / "input.txt",
        input_format="txt",
        output_path=tmp_path / f"out.{output_format}",
        output_format=output_format,
        options=EmbedOptions(chunk_rows=8, batch_tokens=32, **options),  # type: ignore[arg-type]
    )


def uninterrupted_output(tmp_path: Path, models_dir: Path, output_format: OutputFormat) -> Path:
    """Write the input to `tmp_path` and to a `reference` folder beside it, run the reference
    once uninterrupted, and return that folder (its output is what a resumed run must equal)."""
    write_input(tmp_path / "input.txt")
    reference = tmp_path / "reference"
    reference.mkdir()
    write_input(reference / "input.txt")
    run(models_dir, make_job(reference, output_format))
    return reference


@pytest.mark.parametrize("output_format", ["jsonl", "npy", "parquet"])
@pytest.mark.parametrize("stop_at", [1, 8, 9, 23, 49])
def test_interrupted_run_resumes_to_the_same_output(
    tmp_path: Path, fake_models_dir: Path, output_format: OutputFormat, stop_at: int
) -> None:
    reference = uninterrupted_output(tmp_path, fake_models_dir, output_format)

    job = make_job(tmp_path, output_format)
    with pytest.raises(Interrupted):
        run(fake_models_dir, job, progress=StopAfter(stop_at))
    saved = read_checkpoint(checkpoint_path(job.output_path))
    assert saved is not None
    assert saved.rows_done == (stop_at - 1) // 8 * 8  # whole chunks before the interrupted one
    assert not job.output_path.exists()

    summary = run(fake_models_dir, job)
    assert summary.resumed_rows == saved.rows_done
    assert summary.rows == ROWS - saved.rows_done
    assert summary.empty == len(range(0, ROWS, 7))  # rows with no words
    assert not checkpoint_path(job.output_path).exists()
    assert not has_partial(job.output_path)
    assert job.output_path.read_bytes() == (reference / job.output_path.name).read_bytes()


def test_changed_input_refuses_to_resume_until_restart(
    tmp_path: Path, fake_models_dir: Path
) -> None:
    job = make_job(tmp_path, "jsonl")
    write_input(job.input_path)
    with pytest.raises(Interrupted):
        run(fake_models_dir, job, progress=StopAfter(20))
    with job.input_path.open("a") as stream:
        stream.write("one more line\n")
    with pytest.raises(CheckpointMismatch, match="input size: was") as refusal:
        run(fake_models_dir, job)
    assert "--restart" in refusal.value.message
    assert "16 rows done" in refusal.value.message

    summary = run(fake_models_dir, job, restart=True)
    assert summary.resumed_rows == 0
    assert len(job.output_path.read_text().splitlines()) == ROWS + 1


def test_changed_options_refuse_to_resume(tmp_path: Path, fake_models_dir: Path) -> None:
    job = make_job(tmp_path, "jsonl")
    write_input(job.input_path)
    with pytest.raises(Interrupted):
        run(fake_models_dir, job, progress=StopAfter(20))
    with pytest.raises(CheckpointMismatch, match="dimensions: was None, now 4"):
        run(fake_models_dir, make_job(tmp_path, "jsonl", dimensions=4))
    # Pace options may change between runs: they do not change the vectors.
    resumed = BulkJob(
        job.input_path, "txt", job.output_path, "jsonl", options=EmbedOptions(chunk_rows=5)
    )
    assert run(fake_models_dir, resumed).resumed_rows == 16


def test_run_killed_after_the_output_was_in_place_just_tidies_up(
    tmp_path: Path, fake_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = make_job(tmp_path, "npy")
    write_input(job.input_path)
    saved: list[Checkpoint] = []
    monkeypatch.setattr(runner, "save_checkpoint", lambda path, point: saved.append(point))
    run(fake_models_dir, job)
    monkeypatch.undo()
    expected = job.output_path.read_bytes()
    # As if killed between the final rename and the checkpoint's removal:
    save_checkpoint(checkpoint_path(job.output_path), saved[-1])

    summary = run(fake_models_dir, job)
    assert (summary.rows, summary.resumed_rows) == (0, ROWS)
    assert not checkpoint_path(job.output_path).exists()
    assert job.output_path.read_bytes() == expected


def test_parquet_run_killed_while_removing_its_parts_resumes_cleanly(
    tmp_path: Path, fake_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = make_job(tmp_path, "parquet")
    write_input(job.input_path)
    remove = shutil.rmtree

    def killed_midway(path: Path, ignore_errors: bool = False) -> None:
        if path.name.endswith(".ember-trash") and path.exists():
            next(path.iterdir()).unlink()  # some parts gone, then the kill
            raise Interrupted
        remove(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(Interrupted):
        run(fake_models_dir, job)
    monkeypatch.undo()
    expected = job.output_path.read_bytes()

    summary = run(fake_models_dir, job)
    assert (summary.rows, summary.resumed_rows) == (0, ROWS)
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("out")) == [
        "out.parquet"
    ]
    assert job.output_path.read_bytes() == expected


def test_batches_run_on_the_engines_lanes_with_the_vectors_of_one_lane(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, FAKE_MODEL, fake={"lanes": 2, "delay_seconds": 0.002})
    one_lane = tmp_path / "one_lane"
    write_fake_model(one_lane, FAKE_MODEL)
    outputs = []
    for folder, name in ((models_dir, "lanes"), (one_lane, "one")):
        (tmp_path / name).mkdir()
        write_input(tmp_path / name / "input.txt")
        job = make_job(tmp_path / name, "npy")
        summary = run(folder, job)
        assert summary.rows == ROWS
        outputs.append(job.output_path.read_bytes())
    assert outputs[0] == outputs[1]


class RunsAnotherMidway:
    """A progress report that, once `rows` rows are embedded, runs `other` (a second run on
    the same output, as from another terminal) and records what it raised."""

    def __init__(self, rows: int, other: Callable[[], object]) -> None:
        self.rows, self.other = rows, other
        self.seen = 0
        self.raised: list[Exception] = []

    def start(self, total_rows: int, done_rows: int) -> None:
        self.seen = done_rows

    def advance(self, rows: int, tokens: int) -> None:
        before, self.seen = self.seen, self.seen + rows
        if before < self.rows <= self.seen:
            try:
                self.other()
            except Exception as exc:
                self.raised.append(exc)


@pytest.mark.parametrize("output_format", ["jsonl", "npy"])
def test_a_second_run_on_an_output_being_written_is_refused(
    tmp_path: Path, fake_models_dir: Path, output_format: OutputFormat
) -> None:
    reference = uninterrupted_output(tmp_path, fake_models_dir, output_format)
    job = make_job(tmp_path, output_format)

    def restarted_then_stopped() -> None:  # a --restart run on the same output, then Ctrl-C
        run(fake_models_dir, job, restart=True, progress=StopAfter(9))

    first = RunsAnotherMidway(20, restarted_then_stopped)
    run(fake_models_dir, job, progress=first)
    assert [type(exc) for exc in first.raised] == [OutputBusy]
    assert "already writing" in str(first.raised[0])
    # The first run's output is whole: the second one did not swap its partial file in.
    assert job.output_path.read_bytes() == (reference / job.output_path.name).read_bytes()
    assert [path.name for path in tmp_path.glob("out*")] == [job.output_path.name]


def test_a_chunk_also_ends_at_its_character_budget(
    tmp_path: Path, fake_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = uninterrupted_output(tmp_path, fake_models_dir, "jsonl")
    job = make_job(tmp_path, "jsonl", chunk_chars=40)
    saved_rows: list[int] = []
    save = runner.save_checkpoint

    def record(path: Path, point: Checkpoint) -> None:
        saved_rows.append(point.rows_done)
        save(path, point)

    monkeypatch.setattr(runner, "save_checkpoint", record)
    run(fake_models_dir, job)
    texts = job.input_path.read_text().splitlines()
    ends = [rows for rows in saved_rows if rows]  # the first save is the empty start
    bounds = list(zip([0, *ends], ends, strict=False))
    assert bounds[-1][1] == ROWS
    for start, stop in bounds:
        held_before_last = sum(len(text) for text in texts[start : stop - 1])
        assert stop - start <= 8
        assert held_before_last < 40  # it ended at the row that reached the budget
    assert min(stop - start for start, stop in bounds[:-1]) < 8  # the budget did end some
    assert job.output_path.read_bytes() == (reference / job.output_path.name).read_bytes()
