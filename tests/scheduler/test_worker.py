"""The model worker's lanes: batches run side by side, results land in their requests."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from ember.engines.base import Engine, TokenBatch, TokenIds, Vectors
from ember.engines.fake import FakeEngine
from ember.errors import EngineFailure
from ember.scheduler.batching import PendingPool, WorkItem
from ember.scheduler.scheduler import Scheduler
from ember.scheduler.worker import ModelWorker


class MeetingEngine(FakeEngine):
    """Two lanes that must both be inside `embed` at once, or the barrier breaks."""

    def __init__(self) -> None:
        super().__init__(8, {"lanes": 2})
        self.meeting = threading.Barrier(2, timeout=10)
        self.batches: list[int] = []

    def embed(self, batch: TokenBatch, *, alone: bool = False) -> Vectors:
        assert not alone, "a batch beside another one does not run alone"
        self.meeting.wait()  # raises BrokenBarrierError unless another lane runs meanwhile
        self.batches.append(len(batch))
        return super().embed(batch)


class WatchedEngine(FakeEngine):
    """Two slow lanes that note, for each call, whether it ran alone and what overlapped it."""

    def __init__(self) -> None:
        super().__init__(8, {"lanes": 2, "delay_seconds": 0.05})
        self._lock = threading.Lock()
        self.inside: list[bool] = []  # the `alone` flags of the calls under way
        self.calls: list[tuple[int, bool, int]] = []  # (sequences, alone, calls already inside)

    def embed(self, batch: TokenBatch, *, alone: bool = False) -> Vectors:
        with self._lock:
            self.calls.append((len(batch), alone, len(self.inside)))
            overlapped_alone = any(self.inside)
            self.inside.append(alone)
        try:
            assert not overlapped_alone, "a batch started beside one running alone"
            return super().embed(batch)
        finally:
            with self._lock:
                self.inside.remove(alone)


def test_one_request_is_split_over_idle_lanes_that_run_at_once() -> None:
    engine = MeetingEngine()
    reference = FakeEngine(8, {})

    async def source(_reload: bool) -> Engine:
        return engine

    async def scenario() -> Vectors:
        worker = ModelWorker("m", source, token_budget=512, max_queued_items=100)
        try:
            sequences = [np.arange(1, 17, dtype=np.int64) + offset for offset in range(32)]
            return await worker.embed(sequences)
        finally:
            await worker.close()

    vectors = asyncio.run(scenario())
    assert sorted(engine.batches) == [16, 16]
    expected = reference.embed(
        TokenBatch([np.arange(1, 17, dtype=np.int64) + offset for offset in range(32)])
    )
    np.testing.assert_array_equal(vectors, expected)


class SizedEngine(FakeEngine):
    """Two lanes, each call 0.1 s; notes the size of each batch as it starts."""

    def __init__(self) -> None:
        super().__init__(8, {"lanes": 2, "delay_seconds": 0.1})
        self.sizes: list[int] = []

    def embed(self, batch: TokenBatch, *, alone: bool = False) -> Vectors:
        self.sizes.append(len(batch))
        return super().embed(batch, alone=alone)


def test_the_tail_of_a_request_is_split_between_the_lane_free_and_the_one_about_to_be() -> None:
    engine = SizedEngine()

    async def source(_reload: bool) -> Engine:
        return engine

    async def scenario() -> Vectors:
        worker = ModelWorker("m", source, token_budget=64, max_queued_items=100)
        try:
            return await worker.embed([np.arange(16, dtype=np.int64) + n for n in range(10)])
        finally:
            await worker.close()

    vectors = asyncio.run(scenario())
    assert len(vectors) == 10
    # Four each, then the last two: the first lane to end took both, and the other, ending
    # a moment later, had nothing left; now each takes one.
    assert engine.sizes == [4, 4, 1, 1]


def test_a_fault_in_one_lane_fails_only_its_request_and_the_model_is_reloaded() -> None:
    loads: list[bool] = []

    async def source(reload: bool) -> Engine:
        loads.append(reload)
        return FakeEngine(8, {"lanes": 2, "fail_token": 999, "delay_seconds": 0.01})

    async def scenario() -> tuple[list[Vectors | BaseException], Vectors]:
        worker = ModelWorker("m", source, token_budget=64, max_queued_items=100)
        try:
            requests = [
                worker.embed([np.array([1, 999, 2], dtype=np.int64)]),
                *(worker.embed([np.arange(3, dtype=np.int64) + n]) for n in range(6)),
            ]
            outcomes = await asyncio.gather(*requests, return_exceptions=True)
            after = await worker.embed([np.array([5, 6], dtype=np.int64)])
            return outcomes, after
        finally:
            await worker.close()

    outcomes, after = asyncio.run(scenario())
    failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert failed, "the batch holding the failing token must fail"
    assert all(type(outcome).__name__ == "EngineFailure" for outcome in failed)
    # Two idle lanes split the 7 pending one-sequence requests 4 + 3 at most.
    assert len(failed) <= 4, "only the failing batch (one lane's share of the work) fails"
    reference = FakeEngine(8, {})
    for n, outcome in enumerate(outcomes[1:]):
        if not isinstance(outcome, BaseException):
            expected = reference.embed(TokenBatch([np.arange(3, dtype=np.int64) + n]))
            np.testing.assert_array_equal(outcome, expected)
    assert True in loads, "the model is reloaded after an engine fault"
    assert after.shape == (1, 8)


class ThreadRecordingEngine(FakeEngine):
    """Notes which thread ran each batch."""

    def __init__(self, options: dict[str, object]) -> None:
        super().__init__(8, options)
        self.threads: list[str] = []
        self.alone: list[bool] = []

    def embed(self, batch: TokenBatch, *, alone: bool = False) -> Vectors:
        self.threads.append(threading.current_thread().name)
        self.alone.append(alone)
        return super().embed(batch)


def run_one_by_one(engine: FakeEngine, requests: list[list[np.ndarray]]) -> list[Vectors]:
    """Each request alone, after the previous one finished, on one worker."""

    async def source(_reload: bool) -> Engine:
        return engine

    async def scenario() -> list[Vectors]:
        worker = ModelWorker("m", source, token_budget=512, max_queued_items=100)
        try:
            return [await worker.embed(sequences) for sequences in requests]
        finally:
            await worker.close()

    return asyncio.run(scenario())


def test_a_short_request_on_an_idle_fast_model_runs_on_the_event_loop_thread() -> None:
    engine = ThreadRecordingEngine({})
    short = [np.arange(1, 11, dtype=np.int64)]
    long = [np.arange(1, 101, dtype=np.int64)]  # more than INLINE_MAX_TOKENS
    vectors = run_one_by_one(engine, [short, short, long, short])
    loop_thread = threading.current_thread().name  # asyncio.run runs the loop here
    first, second, third, fourth = engine.threads
    assert first.startswith("engine-m-")  # the engine's speed is not known yet
    assert (second, fourth) == (loop_thread, loop_thread)
    assert third.startswith("engine-m-")
    assert engine.alone == [True] * 4, "each request, one by one, had the engine to itself"
    reference = FakeEngine(8, {})
    np.testing.assert_array_equal(vectors[1], reference.embed(TokenBatch(short)))
    np.testing.assert_array_equal(vectors[2], reference.embed(TokenBatch(long)))


def test_a_slow_engine_keeps_short_requests_on_its_lanes() -> None:
    engine = ThreadRecordingEngine({"delay_seconds": 0.02})  # above INLINE_MAX_SECONDS
    short = [np.arange(1, 11, dtype=np.int64)]
    run_one_by_one(engine, [short, short, short])
    assert all(name.startswith("engine-m-") for name in engine.threads)


def test_a_fault_in_a_request_run_on_the_loop_fails_it_and_reloads_the_model() -> None:
    loads: list[bool] = []
    engines: list[ThreadRecordingEngine] = []

    async def source(reload: bool) -> Engine:
        loads.append(reload)
        if reload or not engines:
            engines.append(ThreadRecordingEngine({"fail_token": 999}))
        return engines[-1]

    async def scenario() -> tuple[BaseException | Vectors, Vectors]:
        worker = ModelWorker("m", source, token_budget=512, max_queued_items=100)
        try:
            await worker.embed([np.array([1, 2], dtype=np.int64)])  # on a lane: now known fast
            failing = await asyncio.gather(
                worker.embed([np.array([1, 999], dtype=np.int64)]), return_exceptions=True
            )
            after = await worker.embed([np.array([5, 6], dtype=np.int64)])
            return failing[0], after
        finally:
            await worker.close()

    failed, after = asyncio.run(scenario())
    assert type(failed).__name__ == "EngineFailure"
    assert engines[0].threads[1] == threading.current_thread().name  # it ran on the loop
    assert True in loads, "the model is reloaded after the fault"
    expected = FakeEngine(8, {}).embed(TokenBatch([np.array([5, 6], dtype=np.int64)]))
    np.testing.assert_array_equal(after, expected)


def test_requests_arriving_together_are_batched_not_run_inline_one_by_one() -> None:
    engine = ThreadRecordingEngine({})
    short = [np.arange(1, 11, dtype=np.int64)]

    async def source(_reload: bool) -> Engine:
        return engine

    async def scenario() -> list[Vectors]:
        worker = ModelWorker("m", source, token_budget=512, max_queued_items=100)
        try:
            await worker.embed(short)  # on a lane: the engine is now known to be fast
            together = [[np.arange(1, 11, dtype=np.int64) + n] for n in range(16)]
            return await asyncio.gather(*(worker.embed(sequences) for sequences in together))
        finally:
            await worker.close()

    vectors = asyncio.run(scenario())
    burst = engine.threads[1:]
    assert threading.current_thread().name not in burst, "none of them ran on the event loop"
    assert len(burst) < 16, "they were batched"
    reference = FakeEngine(8, {})
    for n, result in enumerate(vectors):
        expected = reference.embed(TokenBatch([np.arange(1, 11, dtype=np.int64) + n]))
        np.testing.assert_array_equal(result, expected)


def test_a_lone_batch_runs_alone_and_no_lane_starts_beside_it() -> None:
    engine = WatchedEngine()

    async def source(_reload: bool) -> Engine:
        return engine

    async def scenario() -> None:
        worker = ModelWorker("m", source, token_budget=64, max_queued_items=100)
        try:
            first = asyncio.ensure_future(worker.embed([np.arange(1, 9, dtype=np.int64)]))
            await asyncio.sleep(0.02)  # the first batch is running, alone
            later = [worker.embed([np.arange(n, n + 8, dtype=np.int64)]) for n in range(2, 12)]
            await asyncio.gather(first, *later)
        finally:
            await worker.close()

    asyncio.run(scenario())
    assert engine.calls[0] == (1, True, 0)
    split = [call for call in engine.calls[1:] if not call[1]]
    assert split, "the ten later requests pending together run on both lanes"
    assert max(inside for _, _, inside in engine.calls) == 1, "two lanes ran at once"


async def one_then_another(
    worker: ModelWorker, first: list[TokenIds], then: list[TokenIds], timeout: float = 5
) -> tuple[BaseException | Vectors, Vectors]:
    """The outcome of request `first` (its error, if it failed), then the vectors of request
    `then`, sent once `first` ended; each within `timeout` seconds, not left hanging."""
    try:
        outcome = await asyncio.wait_for(
            asyncio.gather(worker.embed(first), return_exceptions=True), timeout
        )
        return outcome[0], await asyncio.wait_for(worker.embed(then), timeout)
    finally:
        await worker.close()


def test_a_bug_in_forming_a_batch_fails_the_pending_requests_not_the_lane(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A lane thread that died of an unexpected error was never replaced: a one-lane model
    then answered nothing again. The fault is injected once, into the pool."""
    real_next_batch = PendingPool.next_batch
    faults = [RuntimeError("injected")]

    def failing_once(self: PendingPool, share: int = 1) -> list[WorkItem]:
        if faults:
            raise faults.pop()
        return real_next_batch(self, share)

    monkeypatch.setattr(PendingPool, "next_batch", failing_once)

    async def source(_reload: bool) -> Engine:
        return FakeEngine(8, {"lanes": 1})

    worker = ModelWorker("m", source, token_budget=64, max_queued_items=100)
    failed, after = asyncio.run(
        one_then_another(worker, [np.arange(3, dtype=np.int64)], [np.arange(4, dtype=np.int64)])
    )
    assert isinstance(failed, EngineFailure), failed
    assert "RuntimeError" in str(failed)
    assert after.shape == (1, 8), "the same lane serves the next request"
    assert "failed outside the engine" in caplog.text


class ShortAnsweringEngine(FakeEngine):
    """Answers with one vector too few while `short_answers` (shared with its reloads) lasts,
    as a broken engine might."""

    def __init__(self, options: dict[str, object], short_answers: list[None]) -> None:
        super().__init__(8, options)
        self.short_answers = short_answers

    def embed(self, batch: TokenBatch, *, alone: bool = False) -> Vectors:
        vectors = super().embed(batch)
        if self.short_answers:
            self.short_answers.pop()
            return vectors[:-1]
        return vectors


@pytest.mark.parametrize("lanes", [1, 2])
def test_an_engine_answer_short_of_rows_fails_its_request_and_the_model_is_reloaded(
    lanes: int,
) -> None:
    """Before, the rows were stored past the engine fault handling: the lane's error left
    the batch's requests waiting for rows that never came, until the request timeout."""
    loads: list[bool] = []
    short_answers = [None]

    async def source(reload: bool) -> Engine:
        loads.append(reload)
        return ShortAnsweringEngine({"lanes": lanes}, short_answers)

    worker = ModelWorker("m", source, token_budget=64, max_queued_items=100)
    # One batch (or one per lane) holds the whole request: no item is left pending.
    sequences = [np.arange(30, dtype=np.int64) + n for n in range(2)]
    failed, after = asyncio.run(one_then_another(worker, sequences, sequences))
    assert isinstance(failed, EngineFailure), failed
    assert "ValueError" in str(failed)
    assert True in loads, "the model is reloaded after the fault"
    expected = FakeEngine(8, {}).embed(
        TokenBatch([np.arange(30, dtype=np.int64) + n for n in range(2)])
    )
    np.testing.assert_array_equal(after, expected)


def test_a_changed_token_budget_applies_to_the_next_batches() -> None:
    """The worker kept the batch size its model had on first use until a restart: an edited
    `ubatch_size` reloaded the model but not the batching."""
    batches: list[tuple[int, int]] = []

    async def source(_reload: bool) -> Engine:
        return FakeEngine(8, {"lanes": 1})

    async def scenario() -> None:
        scheduler = Scheduler(
            max_queued_items=100, observe_batch=lambda n, t: batches.append((n, t))
        )
        sequences = [np.arange(16, dtype=np.int64) + n for n in range(8)]
        try:
            for budget in (512, 32):
                vectors = await scheduler.submit(
                    "m", sequences, engine_source=source, token_budget=budget
                )
                assert (await vectors).shape == (8, 8)
        finally:
            await scheduler.close()

    asyncio.run(scenario())
    assert batches == [(8, 128), (2, 32), (2, 32), (2, 32), (2, 32)]
