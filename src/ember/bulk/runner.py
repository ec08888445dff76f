"""Runs a bulk job: read a chunk, embed it in length-sorted token-budget batches, write, checkpoint.

Memory stays flat in the file's size: one chunk of rows is held at a time. Per chunk, the
write order is: vectors written, output fsync'd, then the checkpoint replaced; so a run
killed at any instant resumes at the last checkpoint, and the writer drops what came after.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from ember.bulk.checkpoint import (
    Checkpoint,
    Identity,
    check_same_run,
    checkpoint_path,
    input_identity,
    model_identity,
    read_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from ember.bulk.errors import BulkError, InputUnreadable, OutputExists
from ember.bulk.formats import InputFormat, OutputFormat, require_pyarrow
from ember.bulk.lock import output_lock
from ember.bulk.readers import Reader, Row, open_reader
from ember.bulk.tokens import tokenised
from ember.bulk.writers import (
    EmbeddedChunk,
    OutputSpec,
    Writer,
    discard_partial,
    has_partial,
    open_writer,
)
from ember.engines.base import TokenBatch, Vectors, checked_rows, embed_on_lanes
from ember.errors import DimensionsNotSupported, EmberError, EngineFailure, ModelNotEmbedding
from ember.models.loader import LoadedModel
from ember.models.prompts import prompt_for
from ember.models.settings import ModelSettings
from ember.pooling import shorten


@dataclass(frozen=True)
class EmbedOptions:
    """How to embed: the first three change the vectors, the last three only the pace (and
    the memory: a chunk's rows are held whole, so it also ends at `chunk_chars` characters;
    4,096 rows of a megabyte each would have held 4 GB)."""

    input_type: str | None = None
    dimensions: int | None = None
    truncate: bool = True
    batch_tokens: int = 8192
    chunk_rows: int = 4096
    chunk_chars: int = 64 * 2**20


@dataclass(frozen=True)
class BulkJob:
    """One input file to embed into one output file."""

    input_path: Path
    input_format: InputFormat
    output_path: Path
    output_format: OutputFormat
    column: str = "text"
    options: EmbedOptions = field(default_factory=EmbedOptions)

    def identity(self, settings: ModelSettings) -> Identity:
        """Everything that must be unchanged for a checkpoint of this job to be resumed."""
        return {
            **input_identity(self.input_path),
            "input format": self.input_format,
            "column": None if self.input_format == "txt" else self.column,
            **model_identity(settings),
            "output path": str(self.output_path.resolve()),
            "output format": self.output_format,
            "input type": self.options.input_type,
            "dimensions": self.options.dimensions,
            "truncate": self.options.truncate,
        }


class ProgressReport(Protocol):
    """Where a run reports its pace; the CLI draws a bar from it."""

    def start(self, total_rows: int, done_rows: int) -> None: ...

    def advance(self, rows: int, tokens: int) -> None: ...


@dataclass(frozen=True)
class Summary:
    """What a finished run did; rows and tokens count this run, the rest the whole output."""

    output: Path
    total_rows: int
    resumed_rows: int
    rows: int
    tokens: int
    truncated: int
    empty: int
    dimensions: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _ChunkResult:
    chunk: EmbeddedChunk
    tokens: int
    truncated: int
    empty: int


def run_job(
    job: BulkJob,
    settings: ModelSettings,
    load: Callable[[], LoadedModel],
    *,
    restart: bool = False,
    progress: ProgressReport | None = None,
) -> Summary:
    """Embed `job` from its checkpoint on (or from the start), then put the output in place.

    Everything that can refuse the job (input, options, checkpoint) is checked before
    `load` is called, so mistakes cost no model load.
    """
    if job.input_path.resolve() == job.output_path.resolve():
        raise BulkError("The output would overwrite the input; choose another OUTPUT.")
    if not settings.embedding:
        raise ModelNotEmbedding(f"Model '{settings.id}' is not an embedding model", settings.id)
    dimensions = _output_dimensions(settings, job.options.dimensions)
    prefix = prompt_for(settings, job.options.input_type)
    if job.output_format == "parquet":
        require_pyarrow()
    reader = open_reader(job.input_path, job.input_format, job.column)
    identity = job.identity(settings)
    job.output_path.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(job.output_path):
        return _run_locked(
            job, settings, load, reader, identity, dimensions, prefix, restart, progress
        )


def _run_locked(
    job: BulkJob,
    settings: ModelSettings,
    load: Callable[[], LoadedModel],
    reader: Reader,
    identity: Identity,
    dimensions: int,
    prefix: str,
    restart: bool,
    progress: ProgressReport | None,
) -> Summary:
    """The run proper, from its checkpoint on, while it alone holds the output's lock."""
    saved_at = checkpoint_path(job.output_path)
    saved = None if restart else read_checkpoint(saved_at)
    if saved is None and not restart and job.output_path.exists():
        raise OutputExists(
            f"{job.output_path} already exists and no checkpoint says this run made it; "
            "pass --restart to replace it, or choose another OUTPUT."
        )
    if saved is not None:
        check_same_run(saved_at, saved, identity)
        checkpoint = saved
    else:
        # Under --restart, the run being replaced goes whole, its checkpoint with its partial
        # output: kept until this run's first save, it told a Ctrl-C during the count or the
        # model load that its rows were saved, and a bad row found by counting left it to
        # refuse the corrected run.
        discard_partial(job.output_path)
        remove_checkpoint(saved_at)
        checkpoint = Checkpoint(identity, total_rows=reader.count())
    spec = OutputSpec(
        job.output_path,
        dimensions,
        checkpoint.total_rows,
        reader.has_ids,
        {"ember.model": settings.id, "ember.dimensions": str(dimensions)},
    )
    resumed = checkpoint.rows_done
    finished = saved is not None and saved.rows_done == saved.total_rows
    if finished and not has_partial(job.output_path) and job.output_path.exists():
        discard_partial(job.output_path)  # killed after the output was put in place
        remove_checkpoint(saved_at)
        return _summary(spec, checkpoint, resumed, 0, 0, 0.0)

    model = load()
    try:
        writer = open_writer(job.output_format, spec, saved.writer if saved else None)
        try:
            if saved is None:
                checkpoint = Checkpoint(identity, checkpoint.total_rows, writer=writer.sync())
                save_checkpoint(saved_at, checkpoint)
            if progress is not None:
                progress.start(checkpoint.total_rows, resumed)
            started = time.perf_counter()
            rows = reader.rows(skip=resumed)
            checkpoint, tokens = _write_chunks(
                rows, job.options, model, prefix, writer, checkpoint, saved_at, progress
            )
            writer.finish()
            remove_checkpoint(saved_at)
            seconds = time.perf_counter() - started
        finally:
            writer.close()
    except InputUnreadable:
        # Only another input (or other options) can get past a bad row, and no checkpoint
        # resumes on another input: kept, it would only make the corrected run ask for
        # --restart.
        discard_partial(job.output_path)
        remove_checkpoint(saved_at)
        raise
    finally:
        model.engine.close()
    return _summary(spec, checkpoint, resumed, checkpoint.rows_done - resumed, tokens, seconds)


def _write_chunks(
    rows: Iterator[Row],
    options: EmbedOptions,
    model: LoadedModel,
    prefix: str,
    writer: Writer,
    checkpoint: Checkpoint,
    saved_at: Path,
    progress: ProgressReport | None,
) -> tuple[Checkpoint, int]:
    """Embed and write chunk after chunk; the checkpoint follows each durable write."""
    tokens = 0
    for chunk in _chunks(rows, options.chunk_rows, options.chunk_chars):
        if checkpoint.rows_done + len(chunk) > checkpoint.total_rows:
            raise _changed_while_reading(checkpoint.total_rows)
        result = _embed_chunk(chunk, checkpoint.rows_done, model, prefix, options, progress)
        writer.write(result.chunk)
        state = writer.sync()
        checkpoint = checkpoint.advanced(
            len(chunk), result.tokens, result.truncated, result.empty, state
        )
        save_checkpoint(saved_at, checkpoint)
        tokens += result.tokens
    if checkpoint.rows_done != checkpoint.total_rows:
        raise _changed_while_reading(checkpoint.total_rows)
    return checkpoint, tokens


def token_batches(lengths: Sequence[int], budget: int) -> list[npt.NDArray[np.intp]]:
    """Positions grouped shortest first so each batch's padded size stays within `budget`.

    A sequence longer than the budget on its own still gets a batch of one.
    """
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    batches, start = [], 0
    for stop in range(1, len(order) + 1):
        if stop == len(order) or lengths[order[stop]] * (stop - start + 1) > budget:
            batches.append(order[start:stop])
            start = stop
    return batches


def _embed_chunk(
    rows: list[Row],
    first_index: int,
    model: LoadedModel,
    prefix: str,
    options: EmbedOptions,
    progress: ProgressReport | None,
) -> _ChunkResult:
    """Vectors for consecutive rows, in row order; rows without text get zeros."""
    present = np.array([bool(row.text.strip()) for row in rows], dtype=np.bool_)
    positions = np.flatnonzero(present)
    texts = [prefix + rows[position].text for position in positions]
    sequences, truncated = tokenised(
        texts, first_index + positions, model.tokenizer, truncate=options.truncate
    )
    native = np.zeros((len(rows), model.settings.dimensions), dtype=np.float32)
    lengths = [len(sequence) for sequence in sequences]
    batches = token_batches(lengths, options.batch_tokens)
    engine_batches = [TokenBatch([sequences[number] for number in batch]) for batch in batches]
    results = _engine_results(model, engine_batches, first_index, len(rows))
    for batch, vectors in zip(batches, results, strict=True):
        native[positions[batch]] = vectors
        if progress is not None:
            progress.advance(len(batch), sum(lengths[number] for number in batch))
    if progress is not None and len(positions) < len(rows):
        progress.advance(len(rows) - len(positions), 0)
    vectors, dimensions = native, options.dimensions or native.shape[1]
    if dimensions < native.shape[1]:
        vectors = np.zeros((len(rows), dimensions), dtype=np.float32)
        if len(positions):
            vectors[positions] = shorten(
                native[positions], dimensions, layer_norm=model.settings.matryoshka_layer_norm
            )
    ids = [row.id for row in rows]
    return _ChunkResult(
        EmbeddedChunk(first_index, vectors, present, ids),
        tokens=sum(lengths),
        truncated=truncated,
        empty=len(rows) - len(positions),
    )


def _engine_results(
    model: LoadedModel, batches: list[TokenBatch], first_index: int, rows: int
) -> Iterator[Vectors]:
    """The engine's vectors batch by batch; its own fault, or an answer without one vector per
    row, becomes one EngineFailure naming the rows, not a traceback or vectors in the wrong
    places (the chunks before are saved, so the same command resumes)."""
    try:
        for batch, vectors in zip(batches, embed_on_lanes(model.engine, batches), strict=True):
            yield checked_rows(vectors, len(batch), model.settings.dimensions)
    except EmberError:
        raise
    except Exception as exc:
        raise EngineFailure(
            f"The model '{model.settings.id}' failed on rows {first_index}-"
            f"{first_index + rows - 1} ({type(exc).__name__}: {exc}); the {first_index:,} rows "
            "before are saved, so the same command resumes from there."
        ) from exc


def _output_dimensions(settings: ModelSettings, requested: int | None) -> int:
    """The vector length to write, refusing what the model cannot shorten to (as the API does)."""
    if requested is None or requested == settings.dimensions:
        return settings.dimensions
    if requested > settings.dimensions:
        raise DimensionsNotSupported(
            f"--dimensions must be at most {settings.dimensions} for model '{settings.id}'."
        )
    if not settings.matryoshka_dimensions:
        raise DimensionsNotSupported(
            f"Model '{settings.id}' produces {settings.dimensions}-dimensional vectors and "
            "cannot shorten them (it lists no matryoshka_dimensions)."
        )
    return requested


def _chunks(rows: Iterator[Row], size: int, max_chars: int) -> Iterator[list[Row]]:
    """Consecutive rows, `size` at most, ending early once they hold `max_chars` characters."""
    chunk: list[Row] = []
    chars = 0
    for row in rows:
        chunk.append(row)
        chars += len(row.text)
        if len(chunk) >= size or chars >= max_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _changed_while_reading(counted: int) -> InputUnreadable:
    return InputUnreadable(
        f"The input changed while it was read: it was counted at {counted} rows. "
        "Run again once nobody is writing to it."
    )


def _summary(
    spec: OutputSpec, checkpoint: Checkpoint, resumed: int, rows: int, tokens: int, seconds: float
) -> Summary:
    return Summary(
        output=spec.path,
        total_rows=checkpoint.total_rows,
        resumed_rows=resumed,
        rows=rows,
        tokens=tokens,
        truncated=checkpoint.truncated,
        empty=checkpoint.empty,
        dimensions=spec.dimensions,
        seconds=seconds,
    )
