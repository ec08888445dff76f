"""Batch formation: token budget, similar lengths together, no request starved."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from itertools import pairwise

import numpy as np
import pytest

from ember.scheduler.batching import EmbeddingJob, PendingPool, WorkItem, balanced_budget


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


def make_job(loop: asyncio.AbstractEventLoop, *lengths: int) -> EmbeddingJob:
    sequences = [np.arange(length, dtype=np.int64) for length in lengths]
    return EmbeddingJob(sequences, loop.create_future())


def drain(pool: PendingPool) -> list[list[tuple[EmbeddingJob, int, int]]]:
    """Every batch, taken as lanes take them: each after asking whether work is pending."""
    batches = []
    while pool and (batch := pool.next_batch()):
        batches.append([(item.job, item.index, item.length) for item in batch])
    return batches


def test_every_batch_fits_the_padded_token_budget(loop: asyncio.AbstractEventLoop) -> None:
    rng = np.random.default_rng(0)
    pool = PendingPool(token_budget=512)
    jobs = [make_job(loop, *rng.integers(5, 250, size=20)) for _ in range(5)]
    for job in jobs:
        pool.add(job)
    batches = drain(pool)
    for batch in batches:
        assert max(length for _, _, length in batch) * len(batch) <= 512
    seen = sorted((id(job), index) for batch in batches for job, index, _ in batch)
    assert seen == sorted((id(job), index) for job in jobs for index in range(20))


def test_sorting_by_length_keeps_padding_low(loop: asyncio.AbstractEventLoop) -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(5, 250, size=400)
    pool = PendingPool(token_budget=2048)
    pool.add(make_job(loop, *lengths))
    batches = drain(pool)
    padded = sum(max(length for *_, length in batch) * len(batch) for batch in batches)
    assert padded / lengths.sum() < 1.06


def test_a_large_mixed_request_is_sorted_whole_not_in_slices(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """The benchmark's mixed corpus: 128 lengths spread over 5-250, in one request."""
    lengths = [5 + (245 * index) // 127 for index in range(128)]
    np.random.default_rng(7).shuffle(lengths)
    pool = PendingPool(token_budget=512)
    pool.add(make_job(loop, *lengths))
    batches = drain(pool)
    padded = sum(max(length for *_, length in batch) * len(batch) for batch in batches)
    assert padded / sum(lengths) < 1.05


def test_requests_take_turns_and_each_batch_mixes_similar_lengths_across_them(
    loop: asyncio.AbstractEventLoop,
) -> None:
    pool = PendingPool(token_budget=160)
    short = [make_job(loop, 10) for _ in range(16)]
    for job in short:
        pool.add(job)
    first = pool.next_batch()
    assert len(first) == 16, "one-sentence requests of one size share a batch"


def test_a_single_sequence_over_the_budget_still_runs_alone(
    loop: asyncio.AbstractEventLoop,
) -> None:
    pool = PendingPool(token_budget=100)
    pool.add(make_job(loop, 300, 10))
    batches = drain(pool)
    assert sorted(len(batch) for batch in batches) == [1, 1]


def test_a_small_request_is_not_starved_by_a_large_one(loop: asyncio.AbstractEventLoop) -> None:
    pool = PendingPool(token_budget=64)
    large = make_job(loop, *([16] * 1000))
    pool.add(large)
    pool.next_batch()
    small = make_job(loop, 16)
    pool.add(small)
    waited = 0
    while not any(item.job is small for item in pool.next_batch()):
        waited += 1
        assert waited < 2, "the small request waited behind the large one"


def test_cancelled_jobs_are_dropped_before_they_cost_compute(
    loop: asyncio.AbstractEventLoop,
) -> None:
    pool = PendingPool(token_budget=64)
    gone = make_job(loop, *([8] * 50))
    kept = make_job(loop, 8, 8)
    pool.add(gone)
    pool.add(kept)
    gone.future.cancel()
    run_one_step(loop)  # the pool hears of it on the loop's next step, as in the server
    assert pool.queued_items == 2
    batches = drain(pool)
    assert all(job is kept for batch in batches for job, _, _ in batch)
    assert sum(len(batch) for batch in batches) == 2


def test_a_job_ending_after_the_pool_said_it_had_work_still_leaves_a_batch(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """A lane asks whether work is pending, then takes a batch: an end heard in between must
    not leave it an empty batch to run."""
    pool = PendingPool(token_budget=64)
    job = make_job(loop, 8, 8)
    pool.add(job)
    assert pool
    job.future.cancel()
    run_one_step(loop)
    assert len(pool.next_batch()) == 2
    assert not pool


class EndingMidScan(asyncio.Future[np.ndarray]):
    """A request's future whose client leaves (it is cancelled, on the event loop's thread)
    between the first and the second time a lane thread asks whether it is done."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self.asked = 0

    def done(self) -> bool:
        self.asked += 1
        if self.asked == 2:
            self.cancel()
        return super().done()


def test_a_job_ending_while_a_lane_drops_ended_jobs_leaves_the_pool_consistent(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Clients leave on the event loop while a lane scans the pool for ended jobs. The window
    and the turns must agree on who is left: window items of a job gone from the turns made
    next_batch raise IndexError in the lane, whose thread died, and the model then hung."""
    pool = PendingPool(token_budget=64)
    first = make_job(loop, 8)
    last = EmbeddingJob([np.arange(8, dtype=np.int64)], EndingMidScan(loop))
    pool.add(first)
    pool.add(last)
    first.future.cancel()
    run_one_step(loop)  # the pool hears of it: the next question scans for ended jobs
    while pool:  # the scan sees `last` end halfway through
        pool.next_batch()
    run_one_step(loop)
    assert pool.queued_items == 0
    assert pool.next_batch() == []


def run_one_step(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0))


def test_idle_lanes_split_one_request_between_them(loop: asyncio.AbstractEventLoop) -> None:
    pool = PendingPool(token_budget=512)
    pool.add(make_job(loop, *([16] * 32)))  # 512 tokens: one batch for one lane
    first = pool.next_batch(share=2)
    second = pool.next_batch(share=1)
    assert (len(first), len(second)) == (16, 16)
    assert not pool.next_batch()


def padded(batch: list[WorkItem]) -> int:
    return max(item.length for item in batch) * len(batch)


def test_one_idle_lane_takes_all_pending_work_whose_padded_cost_fits(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Padding makes sorted work cost more than its tokens: 30 sentences of 17-18 tokens
    (522 tokens, 540 padded) are one call under a 1,024 budget, not a call and a tail."""
    pool = PendingPool(token_budget=1024)
    pool.add(make_job(loop, *([17] * 18 + [18] * 12)))
    assert len(pool.next_batch(share=1)) == 30
    assert not pool


def test_idle_lanes_split_one_request_so_they_finish_together(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """The benchmark's 64 sentences of 14-18 tokens: two calls whose padded costs are as even
    as sorted runs allow (the busier lane decides when the request is done)."""
    rng = np.random.default_rng(20240611)
    for _ in range(200):
        lengths = sorted(int(length) for length in rng.integers(14, 19, size=64))
        pool = PendingPool(token_budget=2048)
        pool.add(make_job(loop, *lengths))
        first = pool.next_batch(share=2)
        second = pool.next_batch(share=1)
        assert not pool, "two idle lanes, two calls"
        best = min(
            max(lengths[split - 1] * split, lengths[-1] * (64 - split)) for split in range(1, 64)
        )
        assert max(padded(first), padded(second)) == best


def run_cost(lengths: list[int], start: int, stop: int) -> int:
    """A run's padded cost as a budget counts it: one sequence runs alone whatever its length."""
    return lengths[stop - 1] * (stop - start) if stop - start > 1 else 0


def test_balanced_budget_is_the_least_cost_of_a_split_into_runs() -> None:
    rng = np.random.default_rng(3)
    for _ in range(500):
        lengths = sorted(
            int(length) for length in rng.integers(1, 60, size=int(rng.integers(1, 9)))
        )
        parts = int(rng.integers(1, 4))
        ceiling = int(rng.integers(1, 400))
        floor = min(ceiling, -(-sum(lengths) // parts))
        splits = itertools.combinations(range(1, len(lengths)), min(parts, len(lengths)) - 1)
        costs = [
            max(run_cost(lengths, *run) for run in pairwise((0, *cut, len(lengths))))
            for cut in splits
        ]
        fitting = [cost for cost in costs if cost <= ceiling]
        want = max(floor, min(fitting)) if fitting else ceiling
        assert balanced_budget(lengths, parts, floor, ceiling) == want, (lengths, parts, ceiling)


def test_whole_batch_says_whether_a_lone_job_leaves_the_pool_in_one_batch(
    loop: asyncio.AbstractEventLoop,
) -> None:
    rng = np.random.default_rng(5)
    answers = set()
    for _ in range(300):
        lengths = rng.integers(1, 40, size=int(rng.integers(1, 6)))
        share = int(rng.integers(1, 3))
        pool = PendingPool(token_budget=int(rng.integers(8, 128)))
        job = make_job(loop, *lengths)
        predicted = pool.whole_batch(job.sequences, share=share)
        pool.add(job)
        pool.next_batch(share=share)
        assert predicted == (not pool), (lengths, share, pool.token_budget)
        answers.add(predicted)
    assert answers == {True, False}


@pytest.mark.parametrize(
    ("running_tokens", "taken"),
    [
        (408, 3),  # the busy lane has a whole batch left: the tail is this lane's
        (240, 2),  # it is part way through: it will take the last one when it ends
        (0, 2),  # it is about to end: half each
    ],
)
def test_a_lane_beside_a_busy_one_takes_its_part_of_the_tail(
    loop: asyncio.AbstractEventLoop, running_tokens: int, taken: int
) -> None:
    pool = PendingPool(token_budget=512)
    pool.add(make_job(loop, 136, 136, 136))
    assert len(pool.next_batch(share=2, running_tokens=running_tokens)) == taken


def test_a_lane_beside_a_busy_one_takes_a_full_batch_while_much_is_pending(
    loop: asyncio.AbstractEventLoop,
) -> None:
    pool = PendingPool(token_budget=512)
    pool.add(make_job(loop, *[128] * 40))
    assert len(pool.next_batch(share=2, running_tokens=0)) == 4  # 512 padded tokens
