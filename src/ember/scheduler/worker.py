"""The per-model engine threads ("lanes") that pull batches from the model's pending pool.

A lane forms its batch itself, the moment it is free: whatever arrived while the previous
batch ran joins the next one, and the engine never waits for the event loop to hand it work.
Engines that allow it run several lanes (see OnnxEngine); pending work is split between
them, busy lanes counted by what their batches have left (see LaneProgress). Requests add
work and wake a lane; lanes store result rows in their requests and wake the event loop only
when requests complete. Faults are handled on the event loop (reloading a model is async)
while the lanes wait.

A batch that leaves nothing pending and finds no other lane running runs `alone`: the engine
may give it every core, and no lane starts another batch until it returns (a second batch
beside it would oversubscribe the cores).

One exception: a short request that finds the model idle runs on the event loop's own thread,
when the engine is known to answer such requests fast (see INLINE_MAX_SECONDS).

Lanes live as long as the engine they serve: once it is freed (the model unloaded by
keep_alive or the memory budget, or dropped with its folder), idle lanes end, and work that
comes later starts new ones for the engine it brings. Kept waiting, they added up: 2 threads
per model removed, for as long as the server ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence

from ember.engines.base import Engine, TokenBatch, TokenIds, Vectors, checked_rows
from ember.errors import (
    EmbeddingUnsupported,
    EmberError,
    EngineFailure,
    ModelLoadFailed,
    Overloaded,
)
from ember.scheduler.batching import EmbeddingJob, PendingPool, WorkItem
from ember.scheduler.progress import LaneProgress

log = logging.getLogger(__name__)

EngineSource = Callable[[bool], Awaitable[Engine]]
"""Returns the model's engine; called with True to reload it after a failure."""

BatchObserver = Callable[[int, int], None]
"""Told (sequences, padded tokens) of every batch run, for metrics."""

# A request of at most this many tokens that finds the model idle (nothing pending, no lane
# running) runs on the event loop's thread, past the lanes: handing it to a lane and back
# costs two thread wake-ups: 0.05-0.1 ms of a 10-token MiniLM query's ~2.2 ms end to end
# (servers alternating; the engine call itself went from 1.50 to 1.37 ms in a trace).
INLINE_MAX_TOKENS = 64
# ...but only while such short batches have been taking at most this long: the loop serves
# nothing else meanwhile, so a slow engine (a large model, a loaded machine) keeps the lanes.
INLINE_MAX_SECONDS = 0.005
# Weight of the newest short batch in the running estimate of their duration.
_ESTIMATE_WEIGHT = 0.2


class ModelWorker:
    """Batches one model's work across requests and runs it on the engine's lanes."""

    def __init__(
        self,
        name: str,
        engine_source: EngineSource,
        *,
        token_budget: int,
        max_queued_items: int,
        observe_batch: BatchObserver | None = None,
    ) -> None:
        self.name = name
        self._engine_source = engine_source
        self._max_queued_items = max_queued_items
        self._observe_batch = observe_batch
        # Everything below is shared with the engine thread and guarded by _ready's lock.
        self._ready = threading.Condition()
        self._pool = PendingPool(token_budget)
        self._engine: Engine | None = None  # held only while work is pending (unload frees it)
        # The engine lanes serve, referenced weakly and cleared on the event loop once freed;
        # its lanes. Never dereferenced on the event loop: that could free it there.
        self._current: weakref.ref[Engine] | None = None
        self._current_lanes = 0
        self._admitting = 0  # submits under way (on the event loop): see `retired`
        self._recovering = 0  # faults being handled on the event loop: lanes wait
        self._running = 0  # lanes inside engine.embed
        self._progress = LaneProgress()  # what the lanes' batches have left
        self._alone = False  # a batch runs alone: the other lanes wait until it returns
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._recoveries: set[asyncio.Task[None]] = set()
        # Running estimate of short batches' engine time; unknown until lanes ran one.
        self._short_batch_seconds: float | None = None

    @property
    def queued_items(self) -> int:
        with self._ready:
            return self._pool.queued_items

    @property
    def retired(self) -> bool:
        """Whether nothing is left of it but the object: no live engine, lane, work or request
        being admitted. On the event loop, a retired worker can be forgotten (see Scheduler)."""
        with self._ready:
            return not (
                self._admitting
                or self._threads
                or self._running
                or self._recovering
                or self._pool
                or self._current is not None
            )

    def set_token_budget(self, token_budget: int) -> None:
        """Batches formed from now on hold at most `token_budget` padded tokens. Asked on
        every request; the lock is taken only for a change."""
        if self._pool.token_budget != token_budget:
            with self._ready:
                self._pool.token_budget = token_budget

    async def embed(self, sequences: Sequence[TokenIds]) -> Vectors:
        """Vectors for `sequences`, in order; cancelling the await drops the queued work."""
        vectors = await self.submit(sequences)
        try:
            return await vectors
        finally:
            if not vectors.done():
                vectors.cancel()  # the caller went away: its items are skipped

    async def submit(
        self, sequences: Sequence[TokenIds], engine: Engine | None = None
    ) -> asyncio.Future[Vectors]:
        """Queue `sequences` for `engine`, else the engine source's; the future gets their
        vectors in order (already, when the request ran on this thread). Cancelling the
        future drops the queued work."""
        if engine is None:
            self._admitting += 1  # a retired worker is forgotten: not while this one waits
            try:
                engine = await self._engine_source(False)  # loads the model on first use
            finally:
                self._admitting -= 1
        job = EmbeddingJob(sequences, asyncio.get_running_loop().create_future())
        with self._ready:
            self._serve_engine(engine)
            waiting = self._pool.queued_items
            # An idle queue takes any request: one larger than the bound would otherwise get
            # 429 forever, and retrying it could never help.
            if waiting and waiting + len(sequences) > self._max_queued_items:
                raise Overloaded(
                    f"The queue of model '{self.name}' is full "
                    f"({waiting} inputs waiting); retry shortly."
                )
            inline = self._may_run_inline(sequences, engine.lanes)
            if inline:
                # Reserved: requests read meanwhile queue for the lanes, which wait.
                self._running += 1
                self._alone = True
            else:
                self._enqueue(job, engine)
        if inline:
            if await self._still_alone():
                self._run_inline(engine, job, engine.lanes)
            else:
                with self._ready:
                    self._enqueue(job, engine)
        return job.future

    def _enqueue(self, job: EmbeddingJob, engine: Engine) -> None:
        """Under the lock: add the job to the pool and wake a lane."""
        if not self._recovering:
            self._engine = engine
        self._pool.add(job)
        self._start_lanes(engine.lanes)
        self._ready.notify()

    async def _still_alone(self) -> bool:
        """Yield twice, so that requests which arrived with this one are read and queued (the
        first yield lets the loop poll its sockets, the second runs the tasks that created),
        then say whether none was: the inline reservation stands only then.

        Without this, 64 clients sending at once were served one inline request at a time:
        each ran before the loop read the next one, and nothing was ever batched.
        """
        alone = False
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            with self._ready:
                alone = self._running == 1 and not (self._pool or self._recovering or self._closed)
        finally:
            if not alone:
                with self._ready:
                    self._running -= 1
                    self._alone = False
                    self._wake_lanes_for_pending_work()
        return alone

    def _may_run_inline(self, sequences: Sequence[TokenIds], lanes: int) -> bool:
        """Under the lock: is the model idle, the request short and the engine fast?"""
        estimate = self._short_batch_seconds
        return (
            estimate is not None
            and estimate <= INLINE_MAX_SECONDS
            and not (self._pool or self._running or self._recovering or self._closed)
            and sum(len(sequence) for sequence in sequences) <= INLINE_MAX_TOKENS
            and self._pool.whole_batch(sequences, share=lanes)  # as idle lanes would run it
        )

    def _run_inline(self, engine: Engine, job: EmbeddingJob, lanes: int) -> None:
        """Run a whole (short) job on this thread, as the one batch idle lanes would take from
        the pool (its order changes llama.cpp's float rounding); faults take the lanes' path."""
        with self._ready:
            self._pool.add(job)
            batch = self._pool.next_batch(share=lanes)  # all of it: see PendingPool.whole_batch
        try:
            finished = self._store(batch, self._run(engine, batch, alone=True))
        except Exception as exc:
            with self._ready:
                self._recovering += 1
            self._start_recovery(batch, exc)
        else:
            _resolve(finished)
        finally:
            with self._ready:
                self._running -= 1
                self._alone = False
                self._wake_lanes_for_pending_work()

    def _wake_lanes_for_pending_work(self) -> None:
        """Under the lock, after a batch: wake the waiting lanes if work is pending. They wait
        for pending work only, so waking them for none just makes them contend for the GIL with
        the thread serving the next request (0.1 ms of a lone query's round trip).

        With none pending, the engine is let go: work dropped while queued (its request timed
        out, its client left) empties the pool without a lane taking its last batch, which was
        the only other place that let go of it, and the engine, unloaded, stayed in memory
        with its lanes until the model's next request."""
        if self._pool:
            self._ready.notify_all()
        elif not self._recovering:
            self._engine = None

    async def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            threads = list(self._threads)
        for task in list(self._recoveries):
            task.cancel()
        await asyncio.gather(*self._recoveries, return_exceptions=True)
        for thread in threads:
            await asyncio.to_thread(thread.join)

    def _serve_engine(self, engine: Engine) -> None:
        """Under the lock, on the event loop (the caller holds `engine`): lanes serve it from
        now on, and end once it is freed."""
        if self._current is None or self._current() is not engine:
            self._loop = asyncio.get_running_loop()
            self._current = weakref.ref(engine, self._engine_freed)
            self._current_lanes = engine.lanes

    def _engine_freed(self, freed: weakref.ref[Engine]) -> None:
        """On whichever thread freed the engine, maybe inside another lock or the garbage
        collector: it only hands the news to the event loop, so it can never block."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the event loop is gone: nothing to end
                loop.call_soon_threadsafe(self._forget_engine, freed)

    def _forget_engine(self, freed: weakref.ref[Engine]) -> None:
        """On the event loop: the engine is gone; its idle lanes end."""
        with self._ready:
            if self._current is freed:
                self._current, self._current_lanes = None, 0
                self._ready.notify_all()

    def _lane_surplus(self) -> bool:
        """Under the lock, in an idle lane: more lanes than the engine wants (none once it
        is freed), and no work they could be needed for."""
        return len(self._threads) > self._current_lanes and not (self._recovering or self._pool)

    def _start_lanes(self, lanes: int) -> None:
        self._loop = asyncio.get_running_loop()
        while len(self._threads) < lanes:
            thread = threading.Thread(
                target=self._serve, name=f"engine-{self.name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _serve(self) -> None:
        """One lane, kept alive while its engine is: an unexpected error in forming a batch
        (a bug, not an engine fault) fails the pending requests instead of ending the
        thread, which would leave a one-lane model answering nothing until reloaded."""
        try:
            while True:
                try:
                    self._serve_batches()
                    return
                except Exception as exc:
                    log.exception("a lane of %s failed outside the engine", self.name)
                    if not self._fail_pending_after(exc):
                        return
        finally:
            with self._ready:
                if threading.current_thread() in self._threads:
                    self._threads.remove(threading.current_thread())

    def _fail_pending_after(self, exc: Exception) -> bool:
        """Fail the pending requests after a lane's unexpected error; False once the event
        loop is gone. A call of its own, so the lane keeps none of those requests."""
        with self._ready:
            jobs = self._pool.take_all()
            self._engine = None  # held only while work is pending
            self._ready.notify_all()
        error = EngineFailure(
            f"The model '{self.name}' failed while batching this request "
            f"({type(exc).__name__}); retry it."
        )
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(_fail_jobs, jobs, error)
        except RuntimeError:  # the event loop is gone: the server is exiting
            return False
        return True

    def _serve_batches(self) -> None:
        """Run batches until closed, each in a call of its own: a lane waiting for work then
        holds nothing of its last batch. Kept in a loop's variables, the engine stayed alive
        while the lane waited, so an unloaded model's memory (two ONNX Runtime sessions) was
        freed only when its next batch came, and that batch's requests and vectors too."""
        while self._serve_next_batch():
            pass

    def _serve_next_batch(self) -> bool:
        """Wait for work, take a batch, run it and post the result; False once closed, once
        this lane is not needed (see _lane_surplus) or once the event loop is gone."""
        loop = self._loop
        assert loop is not None
        with self._ready:
            while not self._closed and (self._recovering or self._alone or not self._pool):
                if self._lane_surplus():
                    # Decided and done under the lock: work queued from now on sees one
                    # lane fewer and starts another if it needs one.
                    self._threads.remove(threading.current_thread())
                    return False
                self._ready.wait()
            if self._closed:
                return False
            engine = self._engine
            lanes = engine.lanes if engine is not None else 1
            idle_lanes = lanes - self._running
            if self._running:  # beside busy lanes: a part of what is pending and left
                running = self._progress.remaining_tokens()
                batch = self._pool.next_batch(share=lanes, running_tokens=running)
            else:
                batch = self._pool.next_batch(share=idle_lanes)
            alone = not self._running and not self._pool
            progress = self._progress.started(max(item.length for item in batch) * len(batch))
            if not self._pool:
                self._engine = None
            elif idle_lanes > 1:
                self._ready.notify()  # work is left for another idle lane
            self._running += 1
            self._alone = alone
        outcome: Callable[[], None] | None
        try:
            # Rows are stored here and the event loop is woken only for finished requests,
            # not once per batch of a long request.
            finished = self._store(batch, self._run(engine, batch, alone=alone))
        except Exception as exc:  # an engine fault must fail its batch, not the worker
            with self._ready:
                self._recovering += 1
            outcome = functools.partial(self._start_recovery, batch, exc)
        else:
            outcome = functools.partial(_resolve, finished) if finished else None
        finally:
            with self._ready:
                self._running -= 1
                self._progress.ended(progress, beside_others=not alone)
                if alone:
                    self._alone = False
                self._wake_lanes_for_pending_work()
        if outcome is None:
            return True
        try:
            loop.call_soon_threadsafe(outcome)
        except RuntimeError:  # the event loop is gone: the server is exiting
            return False
        return True

    def _store(self, batch: list[WorkItem], vectors: Vectors) -> list[EmbeddingJob]:
        """Keep a batch's rows in their requests; the requests now complete."""
        with self._ready:  # lanes may store into one request at once
            return [
                item.job
                for item, vector in zip(batch, vectors, strict=True)
                if item.job.active and item.job.store(item.index, vector)
            ]

    def _run(self, engine: Engine | None, batch: list[WorkItem], *, alone: bool) -> Vectors:
        if engine is None:  # never expected: pending work always comes with its engine
            raise EngineFailure(f"The model '{self.name}' had no engine for a pending batch.")
        tokens = TokenBatch([item.job.sequences[item.index] for item in batch])
        if self._observe_batch is not None:
            self._observe_batch(len(tokens), tokens.padded_tokens)
        started = time.perf_counter()
        vectors = engine.embed(tokens, alone=alone)
        checked_rows(vectors, len(tokens))
        # Only batches run alone tell how an inline run would go: one beside another runs on
        # part of the cores.
        if alone and tokens.padded_tokens <= INLINE_MAX_TOKENS:
            self._note_short_batch(time.perf_counter() - started)
        return vectors

    def _note_short_batch(self, seconds: float) -> None:
        with self._ready:
            previous = self._short_batch_seconds
            self._short_batch_seconds = (
                seconds if previous is None else previous + _ESTIMATE_WEIGHT * (seconds - previous)
            )

    def _start_recovery(self, batch: list[WorkItem], exc: Exception) -> None:
        task = asyncio.create_task(self._recover(batch, exc), name=f"recover-{self.name}")
        self._recoveries.add(task)
        task.add_done_callback(self._recoveries.discard)

    async def _recover(self, batch: list[WorkItem], exc: Exception) -> None:
        """Settle the failed batch, reload the model and let the engine thread go on.

        A reload that fails answers the batch and everything pending with its error. Any
        error: one not Ember's (a runtime's own, a bug) ended this task unhandled, and the
        pending work then ran with no engine, each batch a new fault and a new reload.
        """
        engine: Engine | None = None
        try:
            if isinstance(exc, EmbeddingUnsupported):
                engine = await self._retry_with_reload(batch)
            else:
                log.error(
                    "engine of %s failed on a batch of %d", self.name, len(batch), exc_info=exc
                )
                _fail(batch, self._failure(exc))
                engine = await self._engine_source(True)
        except Exception as reload_error:
            failure = self._reload_failure(reload_error)
            _fail(batch, failure)  # those not answered yet: a batch to retry after the reload
            self._fail_everything_pending(failure)
        finally:
            with self._ready:
                if engine is not None:
                    self._serve_engine(engine)
                self._engine = engine if self._pool else None
                self._recovering -= 1
                self._ready.notify_all()

    async def _retry_with_reload(self, batch: list[WorkItem]) -> Engine | None:
        """The instance cannot embed: reload it in embedding mode and retry the batch once."""
        engine = await self._engine_source(True)
        tokens = TokenBatch([item.job.sequences[item.index] for item in batch])
        try:
            vectors = await asyncio.to_thread(engine.embed, tokens)
            finished = self._store(batch, checked_rows(vectors, len(tokens)))
        except EmbeddingUnsupported:
            unsupported = EmbeddingUnsupported("Embeddings endpoint not available", self.name)
            _fail(batch, unsupported)
            self._fail_everything_pending(unsupported)
            return None
        except Exception as exc:
            _fail(batch, self._failure(exc))
            return engine
        _resolve(finished)
        return engine

    def _reload_failure(self, exc: Exception) -> EmberError:
        if isinstance(exc, EmberError):
            return exc
        log.error("reloading %s failed", self.name, exc_info=exc)
        return ModelLoadFailed(
            f"The model '{self.name}' could not be reloaded after an engine fault "
            f"({type(exc).__name__}); retry the request.",
            self.name,
        )

    def _failure(self, exc: Exception) -> EmberError:
        if isinstance(exc, EmberError):
            return exc
        return EngineFailure(
            f"The model '{self.name}' failed while computing this batch "
            f"({type(exc).__name__}); it has been reloaded, retry the request."
        )

    def _fail_everything_pending(self, error: EmberError) -> None:
        """On the event loop: fail every request with work still in the pool."""
        with self._ready:
            jobs = self._pool.take_all()
        _fail_jobs(jobs, error)


def _resolve(finished: list[EmbeddingJob]) -> None:
    for job in finished:
        job.resolve()


def _fail_jobs(jobs: list[EmbeddingJob], error: EmberError) -> None:
    for job in jobs:
        if job.active:
            job.future.set_exception(error)


def _fail(batch: list[WorkItem], error: EmberError) -> None:
    for item in batch:
        if item.job.active:
            item.job.future.set_exception(error)
