"""The per-model loop that feeds an engine from its pending pool on a dedicated thread."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from ember.engines.base import Engine, TokenBatch, TokenIds, Vectors
from ember.errors import EmbeddingUnsupported, EmberError, EngineFailure, Overloaded
from ember.scheduler.batching import EmbeddingJob, PendingPool, WorkItem

log = logging.getLogger(__name__)

EngineSource = Callable[[bool], Awaitable[Engine]]
"""Returns the model's engine; called with True to reload it after a failure."""

BatchObserver = Callable[[int, int], None]
"""Told (sequences, padded tokens) of every batch run, for metrics."""


class ModelWorker:
    """Batches one model's work across requests and runs it, one engine call at a time.

    Up to two batches are handed to the engine thread at once, so the engine never waits
    while the event loop distributes results or encodes responses.
    """

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
        self._pool = PendingPool(token_budget)
        self._max_queued_items = max_queued_items
        self._observe_batch = observe_batch
        self._wakeup = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{name}")
        self._task: asyncio.Task[None] | None = None

    @property
    def queued_items(self) -> int:
        return self._pool.queued_items

    async def embed(self, sequences: Sequence[TokenIds]) -> Vectors:
        """Vectors for `sequences`, in order; cancelling the await drops the queued work."""
        waiting = self._pool.queued_items
        # An idle queue takes any request: one larger than the bound would otherwise get 429
        # forever, and retrying it could never help.
        if waiting and waiting + len(sequences) > self._max_queued_items:
            raise Overloaded(
                f"The queue of model '{self.name}' is full "
                f"({waiting} inputs waiting); retry shortly."
            )
        job = EmbeddingJob(sequences, asyncio.get_running_loop().create_future())
        self._pool.add(job)
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"worker-{self.name}")
        try:
            return await job.future
        finally:
            if not job.future.done():
                job.future.cancel()  # the caller went away: its items are skipped

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._thread.shutdown(wait=True)

    async def _run(self) -> None:
        in_flight: list[tuple[list[WorkItem], asyncio.Future[Vectors]]] = []
        while True:
            if not in_flight and not self._pool:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Asked every round, so a reload or unload elsewhere is seen at once.
            engine = await self._engine_or_fail_all()
            if engine is None:
                continue
            while len(in_flight) < 2:
                batch = self._pool.next_batch()
                if not batch:
                    break
                in_flight.append((batch, self._submit(engine, batch)))
            if not in_flight:
                continue
            batch, pending = in_flight.pop(0)
            try:
                vectors = await pending
            except EmbeddingUnsupported:
                await self._drain(in_flight)
                await self._retry_with_reload(batch)
                continue
            except Exception as exc:  # an engine fault must fail its batch, not the worker
                log.exception("engine of %s failed on a batch of %d", self.name, len(batch))
                self._fail(batch, self._failure(exc))
                await self._drain(in_flight)
                await self._reload()
                continue
            self._deliver(batch, vectors)

    def _submit(self, engine: Engine, batch: list[WorkItem]) -> asyncio.Future[Vectors]:
        tokens = TokenBatch([item.job.sequences[item.index] for item in batch])
        if self._observe_batch is not None:
            self._observe_batch(len(tokens), tokens.padded_tokens)
        return asyncio.get_running_loop().run_in_executor(self._thread, engine.embed, tokens)

    async def _engine_or_fail_all(self) -> Engine | None:
        try:
            return await self._engine_source(False)
        except EmberError as exc:
            self._fail_everything_pending(exc)
            return None

    async def _retry_with_reload(self, batch: list[WorkItem]) -> None:
        """The instance cannot embed: reload it in embedding mode and retry the batch once."""
        try:
            engine = await self._engine_source(True)
            vectors = await self._submit(engine, batch)
        except EmbeddingUnsupported:
            unsupported = EmbeddingUnsupported("Embeddings endpoint not available", self.name)
            self._fail(batch, unsupported)
            self._fail_everything_pending(unsupported)
            return
        except EmberError as exc:
            self._fail(batch, exc)
            return
        except Exception as exc:
            self._fail(batch, self._failure(exc))
            return
        self._deliver(batch, vectors)

    async def _reload(self) -> None:
        try:
            await self._engine_source(True)
        except EmberError as exc:
            self._fail_everything_pending(exc)

    async def _drain(self, in_flight: list[tuple[list[WorkItem], asyncio.Future[Vectors]]]) -> None:
        """Settle batches already handed to the engine before it is replaced."""
        for batch, pending in in_flight:
            try:
                self._deliver(batch, await pending)
            except Exception as exc:
                self._fail(batch, self._failure(exc))
        in_flight.clear()

    def _failure(self, exc: Exception) -> EmberError:
        if isinstance(exc, EmberError):
            return exc
        return EngineFailure(
            f"The model '{self.name}' failed while computing this batch "
            f"({type(exc).__name__}); it has been reloaded, retry the request."
        )

    @staticmethod
    def _deliver(batch: list[WorkItem], vectors: Vectors) -> None:
        for item, vector in zip(batch, vectors, strict=True):
            if item.job.active:
                item.job.store(item.index, vector)

    def _fail_everything_pending(self, error: EmberError) -> None:
        while batch := self._pool.next_batch():
            self._fail(batch, error)

    @staticmethod
    def _fail(batch: list[WorkItem], error: EmberError) -> None:
        for item in batch:
            if item.job.active:
                item.job.future.set_exception(error)
