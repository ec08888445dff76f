"""One worker per model, created on first use and forgotten once retired (see ModelWorker)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ember.engines.base import Engine, TokenIds, Vectors
from ember.scheduler.worker import BatchObserver, EngineSource, ModelWorker


class Scheduler:
    """Routes each model's work to that model's worker."""

    def __init__(self, *, max_queued_items: int, observe_batch: BatchObserver | None = None):
        self._max_queued_items = max_queued_items
        self._observe_batch = observe_batch
        self._workers: dict[str, ModelWorker] = {}
        self._reported: set[str] = set()  # the models queue_depths last reported

    async def submit(
        self,
        model_id: str,
        sequences: Sequence[TokenIds],
        *,
        engine_source: EngineSource,
        token_budget: int,
        engine: Engine | None = None,
    ) -> asyncio.Future[Vectors]:
        """Queue `sequences` for `model_id`'s `engine` (else the engine source's), batched with
        other work: the future gets their vectors (see ModelWorker.submit)."""
        worker = self._workers.get(model_id)
        if worker is None:
            self._forget_retired()
            worker = ModelWorker(
                model_id,
                engine_source,
                token_budget=token_budget,
                max_queued_items=self._max_queued_items,
                observe_batch=self._observe_batch,
            )
            self._workers[model_id] = worker
        else:  # the model's settings may have been edited (and the model reloaded) since
            worker.set_token_budget(token_budget)
        return await worker.submit(sequences, engine)

    def queue_depths(self) -> dict[str, int]:
        """Inputs waiting, by model; a model whose worker was forgotten since the last call
        shows 0, so a gauge set from this does not keep its last depth."""
        depths = dict.fromkeys(self._reported - self._workers.keys(), 0)
        depths.update((model_id, worker.queued_items) for model_id, worker in self._workers.items())
        self._reported = set(self._workers)
        return depths

    def _forget_retired(self) -> None:
        """Drop the workers whose models were unloaded or removed and that hold nothing more.
        Asked when a worker is made, so workers never outnumber the models in use by more
        than one; forgetting needs no lock, as only this event loop admits work."""
        retired = [model_id for model_id, worker in self._workers.items() if worker.retired]
        for model_id in retired:
            del self._workers[model_id]

    async def close(self) -> None:
        for worker in self._workers.values():
            await worker.close()
        self._workers.clear()
