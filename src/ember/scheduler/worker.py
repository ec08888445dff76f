"""The per-model engine threads ("lanes") that pull batches from the model's pending pool.

A lane forms its batch itself, the moment it is free: whatever arrived while the previous
batch ran joins the next one, and the engine never waits for the event loop to hand it work.
Engines that allow it run several lanes (see OnnxEngine); work pending when several lanes
are idle is split between them. Requests add work and wake a lane; lanes store result rows
in their requests and wake the event loop only when requests complete. Faults are handled
on the event loop (reloading a model is async) while the lanes wait.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence

from ember.engines.base import Engine, TokenBatch, TokenIds, Vectors
from ember.errors import EmbeddingUnsupported, EmberError, EngineFailure, Overloaded
from ember.scheduler.batching import EmbeddingJob, PendingPool, WorkItem

log = logging.getLogger(__name__)

EngineSource = Callable[[bool], Awaitable[Engine]]
"""Returns the model's engine; called with True to reload it after a failure."""

BatchObserver = Callable[[int, int], None]
"""Told (sequences, padded tokens) of every batch run, for metrics."""


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
        self._recovering = 0  # faults being handled on the event loop: lanes wait
        self._running = 0  # lanes inside engine.embed
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._recoveries: set[asyncio.Task[None]] = set()

    @property
    def queued_items(self) -> int:
        with self._ready:
            return self._pool.queued_items

    async def embed(self, sequences: Sequence[TokenIds]) -> Vectors:
        """Vectors for `sequences`, in order; cancelling the await drops the queued work."""
        engine = await self._engine_source(False)  # loads the model on first use
        job = EmbeddingJob(sequences, asyncio.get_running_loop().create_future())
        with self._ready:
            waiting = self._pool.queued_items
            # An idle queue takes any request: one larger than the bound would otherwise get
            # 429 forever, and retrying it could never help.
            if waiting and waiting + len(sequences) > self._max_queued_items:
                raise Overloaded(
                    f"The queue of model '{self.name}' is full "
                    f"({waiting} inputs waiting); retry shortly."
                )
            if not self._recovering:
                self._engine = engine
            self._pool.add(job)
            self._start_lanes(engine.lanes)
            self._ready.notify()
        try:
            return await job.future
        finally:
            if not job.future.done():
                job.future.cancel()  # the caller went away: its items are skipped

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

    def _start_lanes(self, lanes: int) -> None:
        self._loop = asyncio.get_running_loop()
        while len(self._threads) < lanes:
            thread = threading.Thread(
                target=self._serve, name=f"engine-{self.name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _serve(self) -> None:
        """One lane: take the next batch when free, run it, post the result."""
        loop = self._loop
        assert loop is not None
        while True:
            with self._ready:
                while not self._closed and (self._recovering or not self._pool):
                    self._ready.wait()
                if self._closed:
                    return
                engine = self._engine
                idle_lanes = (engine.lanes if engine is not None else 1) - self._running
                batch = self._pool.next_batch(share=idle_lanes)
                if not self._pool:
                    self._engine = None
                elif idle_lanes > 1:
                    self._ready.notify()  # work is left for another idle lane
                self._running += 1
            outcome: Callable[[], None] | None
            try:
                vectors = self._run(engine, batch)
            except Exception as exc:  # an engine fault must fail its batch, not the worker
                with self._ready:
                    self._recovering += 1
                outcome = functools.partial(self._start_recovery, batch, exc)
            else:
                # Rows are stored here and the event loop is woken only for finished requests,
                # not once per batch of a long request.
                finished = self._store(batch, vectors)
                outcome = functools.partial(_resolve, finished) if finished else None
            finally:
                with self._ready:
                    self._running -= 1
                    self._ready.notify_all()
            if outcome is None:
                continue
            try:
                loop.call_soon_threadsafe(outcome)
            except RuntimeError:  # the event loop is gone: the server is exiting
                return

    def _store(self, batch: list[WorkItem], vectors: Vectors) -> list[EmbeddingJob]:
        """Keep a batch's rows in their requests; the requests now complete."""
        with self._ready:  # lanes may store into one request at once
            return [
                item.job
                for item, vector in zip(batch, vectors, strict=True)
                if item.job.active and item.job.store(item.index, vector)
            ]

    def _run(self, engine: Engine | None, batch: list[WorkItem]) -> Vectors:
        if engine is None:  # never expected: pending work always comes with its engine
            raise EngineFailure(f"The model '{self.name}' had no engine for a pending batch.")
        tokens = TokenBatch([item.job.sequences[item.index] for item in batch])
        if self._observe_batch is not None:
            self._observe_batch(len(tokens), tokens.padded_tokens)
        return engine.embed(tokens)

    def _start_recovery(self, batch: list[WorkItem], exc: Exception) -> None:
        self._recovery = asyncio.create_task(self._recover(batch, exc), name=f"recover-{self.name}")

    async def _recover(self, batch: list[WorkItem], exc: Exception) -> None:
        """Settle the failed batch, reload the model and let the engine thread go on."""
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
        except EmberError as exc:
            self._fail_everything_pending(exc)
        finally:
            with self._ready:
                self._engine = engine if self._pool else None
                self._recovering -= 1
                self._ready.notify_all()

    def _wait_for_idle_lanes(self) -> None:
        with self._ready:
            while self._running and not self._closed:
                self._ready.wait()

    async def _retry_with_reload(self, batch: list[WorkItem]) -> Engine | None:
        """The instance cannot embed: reload it in embedding mode and retry the batch once."""
        engine = await self._engine_source(True)
        tokens = TokenBatch([item.job.sequences[item.index] for item in batch])
        try:
            vectors = await asyncio.to_thread(engine.embed, tokens)
        except EmbeddingUnsupported:
            unsupported = EmbeddingUnsupported("Embeddings endpoint not available", self.name)
            _fail(batch, unsupported)
            self._fail_everything_pending(unsupported)
            return None
        except Exception as exc:
            _fail(batch, self._failure(exc))
            return engine
        _resolve(self._store(batch, vectors))
        return engine

    def _failure(self, exc: Exception) -> EmberError:
        if isinstance(exc, EmberError):
            return exc
        return EngineFailure(
            f"The model '{self.name}' failed while computing this batch "
            f"({type(exc).__name__}); it has been reloaded, retry the request."
        )

    def _fail_everything_pending(self, error: EmberError) -> None:
        with self._ready:
            batches = []
            while batch := self._pool.next_batch():
                batches.append(batch)
        for batch in batches:
            _fail(batch, error)


def _resolve(finished: list[EmbeddingJob]) -> None:
    for job in finished:
        job.resolve()


def _fail(batch: list[WorkItem], error: EmberError) -> None:
    for item in batch:
        if item.job.active:
            item.job.future.set_exception(error)
