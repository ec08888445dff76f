"""`ember embed`: embed every row of a file in-process, resumably, into Parquet, npy or JSONL."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from ember.bulk.checkpoint import checkpoint_path, read_checkpoint
from ember.bulk.errors import CheckpointBroken
from ember.bulk.formats import (
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    InputFormat,
    OutputFormat,
    input_format_for,
    output_format_for,
)
from ember.bulk.runner import BulkJob, EmbedOptions, Summary, run_job
from ember.cli.interrupts import Interrupted, interruptible
from ember.cli.options import home_options, settings_from, warnings_to_terminal
from ember.cli.os_errors import os_error_line
from ember.errors import EmberError, InvalidModelSettings
from ember.models.loader import LoadedModel, load_model
from ember.models.registry import ModelRegistry


@click.command()
@click.argument(
    "input_path",
    metavar="INPUT",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
)
@click.option("-m", "--model", required=True, help="Model id or alias (see `ember models list`).")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write: .parquet, .npy or .jsonl.",
)
@click.option(
    "--column",
    default="text",
    show_default=True,
    help="Field holding the text in JSONL, CSV and Parquet inputs.",
)
@click.option(
    "--format",
    "input_format",
    type=click.Choice(["auto", *INPUT_FORMATS]),
    default="auto",
    show_default=True,
    help="Input format; auto goes by suffix, and plain text (a row a line) otherwise.",
)
@click.option(
    "--output-format",
    type=click.Choice(["auto", *OUTPUT_FORMATS]),
    default="auto",
    show_default=True,
    help="Output format; auto goes by OUTPUT's suffix.",
)
@click.option(
    "--batch-tokens",
    type=click.IntRange(min=1),
    default=8192,
    show_default=True,
    help="Padded tokens per engine call.",
)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Rows embedded, written and checkpointed together.",
)
@click.option("--input-type", help="Prompt to use: query, document, or a prompt of the model.")
@click.option(
    "--dimensions",
    type=click.IntRange(min=1),
    help="Shorten vectors to this length (models with matryoshka_dimensions only).",
)
@click.option(
    "--truncate/--no-truncate",
    default=True,
    show_default=True,
    help="Cut rows longer than the model takes, or stop at the first one.",
)
@click.option(
    "--resume/--restart",
    default=True,
    show_default=True,
    help="Continue an interrupted run from its checkpoint, or start over (replacing OUTPUT).",
)
@home_options
def embed(
    input_path: Path,
    model: str,
    output: Path,
    column: str,
    input_format: Literal["auto"] | InputFormat,
    output_format: Literal["auto"] | OutputFormat,
    batch_tokens: int,
    chunk_rows: int,
    input_type: str | None,
    dimensions: int | None,
    truncate: bool,
    resume: bool,
    home: Path | None,
    models_dir: Path | None,
) -> None:
    """Embed every row of INPUT (txt, JSONL, CSV or Parquet) into OUTPUT, without a server.

    Rows with no text keep their place and get no vector (null; zeros in .npy). An
    interrupted run resumes where its checkpoint says, with the same command; an OUTPUT
    that exists otherwise is replaced only with --restart.
    """
    warnings_to_terminal()
    refuse_dashes(input_path, output)
    chosen_output = output_format_for(output) if output_format == "auto" else output_format
    if chosen_output is None:
        raise click.UsageError(
            f"Cannot tell the output format from '{output.name}'; pass --output-format."
        )
    job = BulkJob(
        input_path=input_path,
        input_format=input_format_for(input_path) if input_format == "auto" else input_format,
        output_path=output,
        output_format=chosen_output,
        column=column,
        options=EmbedOptions(input_type, dimensions, truncate, batch_tokens, chunk_rows),
    )
    registry = ModelRegistry(settings_from(home=home, models_dir=models_dir).resolved_models_dir)
    console = Console(stderr=True)
    try:
        entry = registry.find(model)
        settings = entry.settings
        if settings is None:
            raise InvalidModelSettings(entry.problem or "invalid settings", entry.model_id)

        def load() -> LoadedModel:
            return load_model(entry.folder, settings)

        with interruptible(), RichProgress(console) as progress:
            summary = run_job(
                job,
                settings,
                load,
                restart=not resume,
                progress=progress if console.is_terminal else None,
            )
    except EmberError as exc:
        raise click.ClickException(exc.message) from exc
    except OSError as exc:  # unreadable input, full disk, no permission: say which file
        line = os_error_line(exc, input_path, output)
        raise click.ClickException(line + saved_note(output)) from exc
    except KeyboardInterrupt as stop:
        click.echo(interrupted_line(output), err=True)
        status = stop.exit_status if isinstance(stop, Interrupted) else 128 + signal.SIGINT
        raise SystemExit(status) from None
    click.echo(summary_line(summary))


def refuse_dashes(input_path: Path, output: Path) -> None:
    """'-' names no file here: a run reads INPUT more than once (to count its rows, and to
    resume), and builds OUTPUT beside itself before putting it in place."""
    if str(input_path) == "-":
        raise click.UsageError(
            "INPUT cannot be stdin ('-'): a run reads it more than once, to count its rows "
            "and to resume. Save the rows to a file first."
        )
    if str(output) == "-":
        raise click.UsageError(
            "OUTPUT cannot be stdout ('-'): a run writes it in place, resumably. Name a file "
            "(e.g. -o vectors.jsonl), then read that."
        )


def interrupted_line(output: Path) -> str:
    """What a stopped run kept. A damaged checkpoint (one a run under --restart has not yet
    replaced, say) is said in the same line, not raised: raised here, it was a traceback."""
    try:
        saved = read_checkpoint(checkpoint_path(output))
    except CheckpointBroken as exc:
        return f"Interrupted. {exc.message}"
    done = saved.rows_done if saved else 0
    return f"Interrupted: {done} rows are saved; run the same command to resume."


def saved_note(output: Path) -> str:
    """What a run that failed part-way (a full disk, say) kept, so the user knows to resume."""
    try:
        saved = read_checkpoint(checkpoint_path(output))
    except EmberError:
        return ""
    if saved is None or saved.rows_done == 0:
        return ""
    return f" ({saved.rows_done:,} rows are saved; run the same command to resume)"


def summary_line(summary: Summary) -> str:
    """One line that says what was written, how fast, and which rows were special."""
    resumed = f", resumed after row {summary.resumed_rows:,}" if summary.resumed_rows else ""
    return (
        f"Embedded {summary.total_rows:,} rows into {summary.output} "
        f"({summary.dimensions} dims{resumed}): {summary.rows:,} rows in "
        f"{summary.seconds:.1f} s, {summary.rows_per_second:,.0f} rows/s, "
        f"{summary.tokens_per_second:,.0f} tokens/s; {summary.truncated:,} truncated, "
        f"{summary.empty:,} empty (no vector)."
    )


class RichProgress:
    """A rows bar with rows/s, tokens/s and ETA, drawn on stderr while the run lasts."""

    def __init__(self, console: Console) -> None:
        self._bar = Progress(
            TextColumn("embedding"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rates]}"),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        self._task: TaskID | None = None
        self._rows = self._tokens = 0
        self._started = time.perf_counter()

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._bar.stop()

    def start(self, total_rows: int, done_rows: int) -> None:
        self._started = time.perf_counter()
        self._task = self._bar.add_task("embed", total=total_rows, completed=done_rows, rates="")

    def advance(self, rows: int, tokens: int) -> None:
        if self._task is None:
            return
        self._rows += rows
        self._tokens += tokens
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        rates = f"{self._rows / elapsed:,.0f} rows/s {self._tokens / elapsed:,.0f} tokens/s"
        self._bar.update(self._task, advance=rows, rates=rates)
