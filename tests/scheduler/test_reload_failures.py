"""A model that cannot be reloaded after an engine fault: the requests waiting for it are
answered at once, with one attempt, and the worker serves again once the model loads."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ember.engines.base import Engine, Vectors
from ember.engines.fake import FakeEngine
from ember.errors import EngineFailure, ModelLoadFailed
from ember.scheduler.worker import ModelWorker

FAULT = 99  # a token id that makes the engine raise


class Reloads:
    """An engine source whose reloads raise `error` (what a runtime or a bug may raise)
    until `fixed`."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.fixed = False
        self.reloads = 0

    async def __call__(self, reload: bool) -> Engine:
        if reload:
            self.reloads += 1
            if not self.fixed:
                raise self.error
        return FakeEngine(8, {"fail_token": FAULT, "delay_seconds": 0.05})


@pytest.mark.parametrize(
    "error",
    [KeyError("hidden_size"), ModelLoadFailed("m: weights unreadable", "m")],
    ids=["unexpected", "load-failed"],
)
def test_requests_pending_when_a_reload_fails_get_its_error_at_once(error: Exception) -> None:
    """An unexpected error ended the recovery task unhandled: the pending requests then ran
    with no engine, each failing alone as a new fault with a new reload attempt ("had no
    engine for a pending batch", 4 reloads for 4 requests)."""
    source = Reloads(error)

    async def scenario() -> tuple[list[Vectors | BaseException], Vectors]:
        worker = ModelWorker("m", source, token_budget=4, max_queued_items=100)
        try:
            futures = [await worker.submit([np.array([1, FAULT, 2])])]
            futures += [await worker.submit([np.array([1, n, 2])]) for n in range(3)]
            outcomes = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10)
            source.fixed = True
            return outcomes, await asyncio.wait_for(worker.embed([np.array([3, 4])]), 10)
        finally:
            await worker.close()

    outcomes, after = asyncio.run(scenario())
    assert isinstance(outcomes[0], EngineFailure)
    for outcome in outcomes[1:]:
        assert isinstance(outcome, ModelLoadFailed), outcome
        assert "had no engine" not in str(outcome)
    assert source.reloads == 1
    assert after.shape == (1, 8)


def test_a_request_on_an_instance_that_cannot_embed_fails_when_the_reload_fails() -> None:
    """The instance cannot embed, so the worker reloads it to retry the batch; when that
    reload failed, the batch's own requests were never answered (they waited for the request
    timeout, 600 s by default)."""

    async def source(reload: bool) -> Engine:
        if reload:
            raise ModelLoadFailed("m: weights unreadable", "m")
        return FakeEngine(8, {"embedding_mode": False})

    async def scenario() -> BaseException | Vectors:
        worker = ModelWorker("m", source, token_budget=64, max_queued_items=100)
        try:
            request = worker.embed([np.array([1, 2, 3])])
            (outcome,) = await asyncio.wait_for(asyncio.gather(request, return_exceptions=True), 10)
            return outcome
        finally:
            await worker.close()

    assert isinstance(asyncio.run(scenario()), ModelLoadFailed)
