"""Forms engine batches from pending work: by token budget, similar lengths together.

Padding is the main waste of a transformer batch: a 5-token text batched with a 250-token
one costs 250 tokens. So the pending pool is kept sorted by length and each batch is grown
around the oldest pending item (which guarantees every item progresses) towards neighbours
of similar length, until the padded cost would exceed the budget.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ember.engines.base import TokenIds, Vectors

_arrival = itertools.count()


@dataclass(eq=False)
class EmbeddingJob:
    """One request's sequences and where their vectors go."""

    sequences: Sequence[TokenIds]
    future: asyncio.Future[Vectors]
    next_index: int = 0
    remaining: int = field(init=False)
    vectors: Vectors | None = None

    def __post_init__(self) -> None:
        self.remaining = len(self.sequences)

    @property
    def active(self) -> bool:
        return not self.future.done()

    @property
    def tokens(self) -> int:
        return sum(len(sequence) for sequence in self.sequences)

    def store(self, index: int, vector: Vectors) -> None:
        """Keep one result; resolve the job when it was the last."""
        if self.vectors is None:
            self.vectors = np.empty((len(self.sequences), vector.shape[-1]), dtype=np.float32)
        self.vectors[index] = vector
        self.remaining -= 1
        if self.remaining == 0 and self.active:
            self.future.set_result(self.vectors)


@dataclass(frozen=True, eq=False)
class WorkItem:
    """One sequence of one job, waiting for an engine batch."""

    job: EmbeddingJob
    index: int
    length: int
    arrival: int = field(default_factory=lambda: next(_arrival))


class PendingPool:
    """Work waiting for the engine: jobs in arrival order and a length-sorted window of items."""

    def __init__(self, token_budget: int, window_batches: int = 4) -> None:
        self.token_budget = token_budget
        self._window_tokens = token_budget * window_batches
        self._jobs: deque[EmbeddingJob] = deque()
        self._window: list[WorkItem] = []

    def add(self, job: EmbeddingJob) -> None:
        self._jobs.append(job)

    def __bool__(self) -> bool:
        self._drop_inactive()
        return bool(self._window) or bool(self._jobs)

    @property
    def queued_items(self) -> int:
        return len(self._window) + sum(
            len(job.sequences) - job.next_index for job in self._jobs if job.active
        )

    def next_batch(self) -> list[WorkItem]:
        """The next batch to run, or [] when nothing is waiting."""
        self._drop_inactive()
        self._refill()
        if not self._window:
            return []
        oldest = min(range(len(self._window)), key=lambda position: self._window[position].arrival)
        start, stop = self._grow(oldest)
        batch = self._window[start:stop]
        del self._window[start:stop]
        return batch

    def _drop_inactive(self) -> None:
        self._window = [item for item in self._window if item.job.active]
        while self._jobs and not self._jobs[0].active:
            self._jobs.popleft()

    def _refill(self) -> None:
        """Take items round-robin across jobs so one large request cannot starve the others."""
        tokens = sum(item.length for item in self._window)
        added = False
        while self._jobs and tokens < self._window_tokens:
            job = self._jobs.popleft()
            if not job.active:
                continue
            length = len(job.sequences[job.next_index])
            self._window.append(WorkItem(job, job.next_index, length))
            tokens += length
            added = True
            job.next_index += 1
            if job.next_index < len(job.sequences):
                self._jobs.append(job)
        if added:
            self._window.sort(key=lambda item: item.length)

    def _grow(self, seed: int) -> tuple[int, int]:
        """Widen [seed, seed+1) over the sorted window while the padded cost fits the budget."""
        start, stop = seed, seed + 1
        while True:
            count = stop - start + 1
            if start > 0 and self._window[stop - 1].length * count <= self.token_budget:
                start -= 1
            elif (
                stop < len(self._window) and self._window[stop].length * count <= self.token_budget
            ):
                stop += 1
            else:
                return start, stop
