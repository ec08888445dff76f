"""A worker's lanes live as long as its engine: freed engines leave no threads waiting."""

from __future__ import annotations

import asyncio
import gc
import threading

import numpy as np

from ember.engines.base import Engine
from ember.engines.fake import FakeEngine
from ember.scheduler.scheduler import Scheduler
from ember.scheduler.worker import ModelWorker

SEQUENCES = [np.arange(1, 5, dtype=np.int64) + offset for offset in range(8)]


def lanes_of(model: str) -> list[str]:
    return [
        thread.name
        for thread in threading.enumerate()
        if thread.name.startswith(f"engine-{model}-")
    ]


async def until(condition: object, timeout: float = 5) -> None:
    """Wait (on the event loop, which the worker needs) until `condition()` holds."""
    assert callable(condition)
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


class Loads:
    """An engine source as the registry is one: the loaded engine, loaded again once unloaded."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        self.engine: FakeEngine | None = None
        self.count = 0

    async def __call__(self, _reload: bool) -> Engine:
        if self.engine is None:
            self.engine = FakeEngine(8, {"lanes": self.lanes})
            self.count += 1
        return self.engine

    def unload(self) -> None:
        self.engine = None
        gc.collect()  # as the registry's unload thread frees it


def test_lanes_end_when_the_engine_is_freed_and_start_again_with_the_next() -> None:
    loads = Loads(lanes=2)

    async def scenario() -> None:
        worker = ModelWorker("cycled", loads, token_budget=16, max_queued_items=100)
        try:
            for _cycle in range(5):
                vectors = await worker.embed(SEQUENCES)
                assert vectors.shape == (8, 8)
                assert len(lanes_of("cycled")) == 2
                loads.unload()
                await until(lambda: not lanes_of("cycled"))
                assert worker.retired
        finally:
            await worker.close()

    asyncio.run(scenario())
    assert loads.count == 5


def test_a_reloaded_engine_with_fewer_lanes_keeps_only_those() -> None:
    loads = Loads(lanes=2)

    async def scenario() -> None:
        worker = ModelWorker("shrunk", loads, token_budget=16, max_queued_items=100)
        try:
            await worker.embed(SEQUENCES)
            held = loads.engine  # a batch still running on it keeps it alive meanwhile
            loads.unload()
            loads.lanes = 1
            await worker.embed(SEQUENCES)
            assert len(lanes_of("shrunk")) <= 2
            del held
            gc.collect()
            await until(lambda: len(lanes_of("shrunk")) == 1)
            assert (await worker.embed(SEQUENCES)).shape == (8, 8)
        finally:
            await worker.close()

    asyncio.run(scenario())


def test_the_scheduler_forgets_the_workers_of_models_gone() -> None:
    """Models added, used and removed one after another: workers do not pile up."""
    sources = {f"model-{index}": Loads(lanes=2) for index in range(20)}

    async def scenario() -> list[dict[str, int]]:
        scheduler = Scheduler(max_queued_items=100)
        depths = []
        try:
            for model_id, loads in sources.items():
                vectors = await scheduler.submit(
                    model_id, SEQUENCES, engine_source=loads, token_budget=16
                )
                assert (await vectors).shape == (8, 8)
                depths.append(scheduler.queue_depths())  # as /metrics asks
                loads.unload()
                await until(lambda model=model_id: not lanes_of(model))
            return depths
        finally:
            await scheduler.close()

    depths = asyncio.run(scenario())
    assert depths[0] == {"model-0": 0}
    # Each later model's worker, and the one it replaced, shown at 0 once for the gauge.
    for index, seen in enumerate(depths[1:], start=1):
        assert seen == {f"model-{index - 1}": 0, f"model-{index}": 0}
