"""Forms engine batches from pending work: by token budget, similar lengths together.

Padding is the main waste of a transformer batch: a 5-token text batched with a 250-token
one costs 250 tokens. So every pending sequence sits in one window sorted by length, and each
batch is a run of neighbours in that order, grown until the padded cost would exceed the
budget. Fairness is between requests, not sequences: the run is grown around an item of the
request whose turn it is, and requests take turns, so a small request never waits behind
all of a large one however much of it is pending.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ember.engines.base import TokenIds, Vectors


@dataclass(eq=False)
class EmbeddingJob:
    """One request's sequences and where their vectors go."""

    sequences: Sequence[TokenIds]
    future: asyncio.Future[Vectors]
    remaining: int = field(init=False)
    queued: int = 0  # its items still in the pending pool
    vectors: Vectors | None = None

    def __post_init__(self) -> None:
        self.remaining = len(self.sequences)

    @property
    def active(self) -> bool:
        return not self.future.done()

    def store(self, index: int, vector: Vectors) -> bool:
        """Keep one result; True when it was the last (the caller then resolves the job on
        the event loop, as asyncio futures require)."""
        if self.vectors is None:
            self.vectors = np.empty((len(self.sequences), vector.shape[-1]), dtype=np.float32)
        self.vectors[index] = vector
        self.remaining -= 1
        return self.remaining == 0

    def resolve(self) -> None:
        """Hand over the vectors; on the event loop."""
        if self.active and self.vectors is not None:
            self.future.set_result(self.vectors)


@dataclass(frozen=True, eq=False)
class WorkItem:
    """One sequence of one job, waiting for an engine batch."""

    job: EmbeddingJob
    index: int
    length: int


class PendingPool:
    """Work waiting for the engine: all pending items sorted by length, jobs taking turns.

    Not thread-safe: its owner serialises access. The one exception is the note that a job
    ended while queued (cancelled: its client left), which comes from the event loop.
    """

    def __init__(self, token_budget: int) -> None:
        self.token_budget = token_budget
        self._window: list[WorkItem] = []
        self._turns: deque[EmbeddingJob] = deque()
        self._tokens = 0
        # Set when a queued job ended: only then are the pending jobs scanned for ended ones.
        # Scanning on every call cost O(pending jobs) per request: 64 clients at once made
        # ~90 property calls per request.
        self._stale = False

    def add(self, job: EmbeddingJob) -> None:
        self._window.extend(
            WorkItem(job, index, len(sequence)) for index, sequence in enumerate(job.sequences)
        )
        self._window.sort(key=_length)  # stable: equal lengths stay in arrival order
        self._tokens += sum(len(sequence) for sequence in job.sequences)
        job.queued = len(job.sequences)
        self._turns.append(job)
        job.future.add_done_callback(lambda _: self._note_ended(job))

    def _note_ended(self, job: EmbeddingJob) -> None:
        if job.queued:
            self._stale = True

    def __bool__(self) -> bool:
        self._drop_inactive()
        return bool(self._window)

    @property
    def queued_items(self) -> int:
        self._drop_inactive()
        return len(self._window)

    def next_batch(self, share: int = 1, running_tokens: int | None = None) -> list[WorkItem]:
        """The next batch to run, or [] when nothing is waiting.

        `share`: how many engine lanes the pending work should be spread over; the batch then
        takes at most that fraction of it, so one request can use every lane. Given
        `running_tokens` (what batches running on other lanes have left), the share is of the
        pending and the running work together, over all `share` lanes, busy or idle.

        Ended jobs are dropped when the pool is asked whether it holds work, not here: a job
        that ends between that question and this call still makes a batch, whose rows for it
        are then not kept (see EmbeddingJob.active), so a lane told there is work gets some.
        """
        if not self._window:
            return []
        if running_tokens is not None:
            budget = self._budget_beside(running_tokens, share)
        else:
            budget = self._shared_budget(self._tokens, share, self._window_lengths)
        turn = self._turns[0]
        seed = next(position for position, item in enumerate(self._window) if item.job is turn)
        start, stop = self._grow(seed, budget)
        batch = self._window[start:stop]
        del self._window[start:stop]
        self._tokens -= sum(item.length for item in batch)
        for item in batch:
            item.job.queued -= 1
        self._turns.rotate(-1)
        if any(item.job.queued == 0 for item in batch):
            self._turns = deque(job for job in self._turns if job.queued > 0)
        return batch

    def whole_batch(self, sequences: Sequence[TokenIds], share: int = 1) -> bool:
        """Would `sequences`, alone in the pool, leave it as one batch of `next_batch(share)`?

        The padded cost of a sorted run only grows as it widens, so the whole run must fit.
        """
        if len(sequences) <= 1:
            return True
        lengths = sorted(len(sequence) for sequence in sequences)
        budget = self._shared_budget(sum(lengths), share, lambda: lengths)
        return lengths[-1] * len(lengths) <= budget

    def _shared_budget(
        self, pending_tokens: int, share: int, sorted_lengths: Callable[[], Sequence[int]]
    ) -> int:
        """A batch's budget when the pending work (`pending_tokens` in all) is spread over
        `share` idle lanes: the smallest padded cost that covers it in `share` batches.

        Its lanes finish together, as the longest decides when a request is done. The even
        share of the tokens is not enough: padding makes the runs of sorted lengths cost more
        than their tokens, so 30 sentences of 14-18 tokens (480 in all, 512 the budget) split
        as 240 + 252 + 18 padded tokens in three calls (one lane ran two) instead of 256 + 252.
        """
        even = -(-pending_tokens // max(1, share))
        if even >= self.token_budget:
            return self.token_budget
        return balanced_budget(sorted_lengths(), max(1, share), even, self.token_budget)

    def _budget_beside(self, running_tokens: int, lanes: int) -> int:
        """A batch's budget when `running_tokens` of work run on busy lanes: this lane's part
        of the pending and running work over all `lanes` (all that is pending if that part
        covers it), the runs of sorted lengths balanced as in _shared_budget."""
        part = -(-(self._tokens + running_tokens) // max(1, lanes))
        if part >= self.token_budget:
            return self.token_budget
        parts = -(-self._tokens // part)
        return balanced_budget(self._window_lengths(), parts, part, self.token_budget)

    def _window_lengths(self) -> list[int]:
        return [item.length for item in self._window]

    def take_all(self) -> list[EmbeddingJob]:
        """Empty the pool; the jobs that had work in it, each once (to be failed)."""
        jobs = dict.fromkeys([*self._turns, *(item.job for item in self._window)])
        for job in jobs:
            job.queued = 0
        self._window, self._turns, self._tokens, self._stale = [], deque(), 0, False
        return list(jobs)

    def _drop_inactive(self) -> None:
        if not self._stale:
            return
        self._stale = False
        # Each job is asked once: clients leave on the event loop while a lane scans, and a
        # job that ended between a scan of the window and one of the turns left items without
        # a turn (next_batch then raised in the lane, whose thread died). One that ends after
        # this question stays in both, and its end marks the pool stale again.
        left = deque(job for job in self._turns if job.active)
        kept = set(left)
        self._turns = left
        self._window = [item for item in self._window if item.job in kept]
        self._tokens = sum(item.length for item in self._window)

    def _grow(self, seed: int, budget: int) -> tuple[int, int]:
        """Widen [seed, seed+1) over the sorted window while the padded cost fits `budget`."""
        start, stop = seed, seed + 1
        while True:
            count = stop - start + 1
            if start > 0 and self._window[stop - 1].length * count <= budget:
                start -= 1
            elif stop < len(self._window) and self._window[stop].length * count <= budget:
                stop += 1
            else:
                return start, stop


def _length(item: WorkItem) -> int:
    return item.length


def balanced_budget(sorted_lengths: Sequence[int], parts: int, floor: int, ceiling: int) -> int:
    """The smallest padded cost in [floor, ceiling] under which `sorted_lengths` fall into at
    most `parts` runs of neighbours (a run costs its longest length times its size);
    `ceiling` when none does."""
    count = len(sorted_lengths)
    whole = sorted_lengths[-1] * count if count else 0  # the cost of one run of them all
    if count <= parts or whole <= floor:  # a lone query, say: on every request's path
        return floor
    low, high = floor, min(ceiling, whole)
    while low < high:
        middle = (low + high) // 2
        if _runs_needed(sorted_lengths, middle, parts + 1) <= parts:
            high = middle
        else:
            low = middle + 1
    return low


def _runs_needed(sorted_lengths: Sequence[int], budget: int, limit: int) -> int:
    """How many runs, each as long as `budget` lets it grow from the left, cover the lengths
    (counting stops at `limit`). A length over the budget makes a run alone, as in _grow."""
    count, start, total = 0, 0, len(sorted_lengths)
    while start < total and count < limit:
        fitting = bisect.bisect_right(
            range(start + 1, total + 1),
            budget,
            key=lambda stop: sorted_lengths[stop - 1] * (stop - start),
        )
        start += max(1, fitting)
        count += 1
    return count if start >= total else limit
