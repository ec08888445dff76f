"""Vectors for prepared inputs: from the cache where it has them, else from the scheduler,
abandoned when the client disconnects or the request times out."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from starlette.requests import Request

from ember.api.state import AppState
from ember.cache import EmbeddingCache, model_fingerprint
from ember.engines.base import Engine, TokenIds, Vectors
from ember.errors import RequestTimedOut
from ember.models.graph_files import graph_files
from ember.models.loader import LoadedModel
from ember.models.registry import RegisteredModel

log = logging.getLogger(__name__)

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its vectors were ready."""


@dataclass
class Fingerprints:
    """Each loaded model's cache fingerprint, computed once per load (it hashes the weights).

    The model is referenced weakly: held here, a model unloaded by keep_alive or the memory
    budget kept its engine (its sessions' memory) until it was loaded again. Requests that
    ask while it is being computed share that computation (each hashed the weights itself:
    after a load, every request in flight did), which a request that times out leaves to
    finish for the next. Entries whose model was freed (unloaded or removed) go when another
    fingerprint is computed: one stayed for every model id ever served, so models added and
    removed under new ids grew the dict without end.
    """

    _known: dict[str, tuple[weakref.ref[LoadedModel], asyncio.Future[bytes | None]]] = field(
        default_factory=dict
    )

    async def of(self, model: LoadedModel) -> bytes | None:
        """None when the weights cannot be read (removed or replaced since the model loaded):
        the loaded model still serves, uncached, until it is loaded again."""
        known = self._known.get(model.settings.id)
        if known is None or known[0]() is not model or _failed(known[1]):
            self._forget_gone()
            computation = asyncio.ensure_future(_fingerprint(model))
            computation.add_done_callback(_failed)  # read, so an error is not logged as lost
            known = (weakref.ref(model), computation)
            self._known[model.settings.id] = known
        return await asyncio.shield(known[1])

    def _forget_gone(self) -> None:
        """Drop the entries of models no longer alive. A computation holds its model until it
        ends, so none is dropped while it runs."""
        gone = [model_id for model_id, (model, _) in self._known.items() if model() is None]
        for model_id in gone:
            del self._known[model_id]


def _failed(computation: asyncio.Future[bytes | None]) -> bool:
    """Whether it ended without a fingerprint or None (cancelled, or an error not OSError's):
    it is computed again instead of failing every later request the same way."""
    return computation.done() and (computation.cancelled() or computation.exception() is not None)


async def _fingerprint(model: LoadedModel) -> bytes | None:
    settings_json = model.settings.model_dump_json()
    try:
        weights = graph_files(model.folder / model.settings.model_file)
        return await asyncio.to_thread(model_fingerprint, weights, settings_json)
    except OSError as exc:
        log.warning("serving %s uncached: cannot read its weights (%s)", model.settings.id, exc)
        return None


async def before(deadline: float, state: AppState, step: Awaitable[T]) -> T:
    """`step`'s result, or RequestTimedOut at `deadline` (event-loop time)."""
    try:
        async with asyncio.timeout_at(deadline):
            return await step
    except TimeoutError:
        raise _timed_out(state) from None


async def loaded_by(
    request: Request, state: AppState, entry: RegisteredModel, deadline: float
) -> LoadedModel:
    """`entry` loaded; RequestTimedOut at `deadline` (event-loop time), ClientGone if the
    client disconnects while it loads.

    A load runs shielded: a request that gives up leaves it to finish for the next one (a
    load slower than the timeout, cancelled each time, would never finish). Its outcome is
    read even when nobody waits for it any more, so an error is not logged as lost.
    """
    if entry.loaded is not None:  # nothing to wait for: no task, no watcher
        return await state.registry.load(entry)
    load = asyncio.ensure_future(state.registry.load(entry))
    load.add_done_callback(lambda done: done.cancelled() or done.exception())
    try:
        return await _until_done_or_gone(request, asyncio.shield(load), deadline)
    except TimeoutError:
        raise _timed_out(state) from None


async def compute_vectors(
    request: Request,
    state: AppState,
    model: LoadedModel,
    sequences: list[TokenIds],
    deadline: float,
) -> tuple[Vectors, int]:
    """The vectors of `sequences` in order, and how many came from the cache; RequestTimedOut
    at `deadline` (event-loop time)."""
    cache = state.cache
    fingerprint = (
        None if cache is None else await before(deadline, state, state.fingerprints.of(model))
    )
    if cache is None or fingerprint is None:
        return await _scheduled(request, state, model, sequences, deadline), 0
    keys = EmbeddingCache.keys(fingerprint, sequences)
    found = await before(deadline, state, asyncio.to_thread(cache.lookup, keys))
    missing = [position for position, vector in enumerate(found) if vector is None]
    hits = len(sequences) - len(missing)
    state.metrics.cache.labels(result="hit").inc(hits)
    state.metrics.cache.labels(result="miss").inc(len(missing))
    computed = np.empty((0, 0), dtype=np.float32)
    if missing:
        computed = await _scheduled(
            request, state, model, [sequences[position] for position in missing], deadline
        )
        await asyncio.to_thread(cache.store, [keys[position] for position in missing], computed)
    width = computed.shape[1] if missing else len(next(v for v in found if v is not None))
    vectors = np.empty((len(sequences), width), dtype=np.float32)
    for position, vector in enumerate(found):
        if vector is not None:
            vectors[position] = vector
    if missing:
        vectors[missing] = computed
    return vectors, hits


async def _scheduled(
    request: Request,
    state: AppState,
    model: LoadedModel,
    sequences: list[TokenIds],
    deadline: float,
) -> Vectors:
    model_id = model.settings.id

    async def engine_source(reload: bool) -> Engine:
        return (await state.registry.acquire(model_id, reload=reload)).engine

    # Queued for the engine this request loaded, unless a reload replaced it since: looked up
    # by name, a model unloaded meanwhile was loaded again, outside the request's deadline,
    # and under a memory budget that unloaded the model whose load had made room, so two
    # models' requests took turns loading theirs twice each.
    vectors = await state.scheduler.submit(
        model_id,
        sequences,
        engine=state.registry.serving(model).engine,
        engine_source=engine_source,
        token_budget=model.settings.ubatch_size,
    )
    if vectors.done():  # it ran on this thread: nothing to wait for, or to watch
        return vectors.result()
    try:
        return await _until_done_or_gone(request, vectors, deadline)
    except TimeoutError:
        raise _timed_out(state) from None


def _timed_out(state: AppState) -> RequestTimedOut:
    timeout = state.settings.request_timeout
    return RequestTimedOut(f"The request did not finish within {timeout:g} s and was dropped.")


async def _until_done_or_gone(request: Request, outcome: asyncio.Future[T], deadline: float) -> T:
    """Await `outcome` (vectors, or a shielded load); give up on disconnect (ClientGone) or at
    `deadline` (TimeoutError), cancelling it: queued work is dropped, a shielded load goes on.

    It is awaited in the request's own task; a watcher cancels that task if the client
    disconnects (one task per request, not two and an asyncio.wait).
    """
    handler = asyncio.current_task()
    assert handler is not None
    gone = asyncio.Event()
    watcher = asyncio.create_task(_cancel_when_gone(request, handler, gone))
    try:
        async with asyncio.timeout_at(deadline):
            return await outcome
    except asyncio.CancelledError:
        if not gone.is_set():
            raise  # the server cancelled the request (shutdown): its queued work is dropped
        handler.uncancel()
        raise ClientGone from None
    finally:
        watcher.cancel()


async def _cancel_when_gone(
    request: Request, handler: asyncio.Task[Any], gone: asyncio.Event
) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gone.set()
            handler.cancel()
            return
