"""The ASGI application: create_app(settings, registry) and its lifespan."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from ember import __version__
from ember.api.compute import Fingerprints
from ember.api.cors import Cors
from ember.api.direct import DirectRoute
from ember.api.errors import install_error_handlers
from ember.api.hosts import TrustedHostMiddleware, allowed_hosts
from ember.api.metrics import Metrics
from ember.api.observe import ObserveMiddleware
from ember.api.protocol import EmbeddingRequest
from ember.api.routes import (
    EMBEDDINGS_ALIASES,
    EMBEDDINGS_PATH,
    create_embeddings,
    protected,
    public,
)
from ember.api.server_options import ServerOptions
from ember.api.shutdown import CutShortMiddleware
from ember.api.state import AppState
from ember.api.token_ids import Cl100k
from ember.cache import EmbeddingCache
from ember.models.registry import ModelRegistry
from ember.scheduler import Scheduler
from ember.settings import ServerSettings


def create_app(settings: ServerSettings, registry: ModelRegistry | None = None) -> ASGIApp:
    """A ready ASGI app: FastAPI inside Ember's middlewares. State lives on the FastAPI
    app's `state`, so several apps can share one process."""
    metrics = Metrics()
    budget = settings.max_loaded_memory_mb
    registry = registry or ModelRegistry(
        settings.resolved_models_dir, memory_budget=budget * 2**20 if budget else None
    )
    registry.on_load = metrics.observe_load
    scheduler = Scheduler(
        max_queued_items=settings.max_queued_inputs, observe_batch=metrics.observe_batch
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        reaper = asyncio.create_task(_unload_idle_models(registry, settings.idle_check_seconds))
        yield
        reaper.cancel()
        await scheduler.close()
        registry.close()
        if cache is not None:
            cache.close()

    app = FastAPI(
        title="Ember",
        version=__version__,
        summary="A local, OpenAI-compatible text-embeddings server.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    cache = (
        EmbeddingCache(settings.cache_entries, settings.cache_path, settings.cache_path_max_entries)
        if settings.cache_entries > 0 or settings.cache_path is not None
        else None
    )
    app.state.ember = AppState(
        settings, registry, scheduler, metrics, Cl100k(), cache, Fingerprints()
    )
    install_error_handlers(app)
    app.include_router(public)
    app.include_router(protected)
    _register_request_schema(app)
    hot_route = DirectRoute(
        app,
        method="POST",
        path=EMBEDDINGS_PATH,
        endpoint=create_embeddings,
        aliases=EMBEDDINGS_ALIASES,
        others=forwarded_headers_applied(app),
    )
    # The routers' own routes: FastAPI lists an included router as one opaque entry.
    routes = [*app.routes, *public.routes, *protected.routes]
    methods = {
        method for route in routes if isinstance(route, Route) for method in route.methods or ()
    }
    return _around_everything(ServerOptions(hot_route, methods), settings, metrics)


def _around_everything(app: ASGIApp, settings: ServerSettings, metrics: Metrics) -> ASGIApp:
    """The middlewares every request passes, innermost first: CORS, trusted hosts, shutdown
    answers, observation. They wrap FastAPI from outside, so the embeddings route (answered
    by DirectRoute before FastAPI) skips FastAPI's own middleware stack too."""
    if settings.cors_origins:
        app = Cors(app, settings.cors_origins)
    hosts = allowed_hosts(settings.host, settings.allowed_hosts)
    if hosts is not None:
        app = TrustedHostMiddleware(app, hosts=hosts)
    return ObserveMiddleware(CutShortMiddleware(app), metrics=metrics)


def forwarded_headers_applied(app: ASGIApp) -> ASGIApp:
    """`app` behind uvicorn's X-Forwarded-For/-Proto handling, trusting the proxies uvicorn
    would (FORWARDED_ALLOW_IPS, else the loopback addresses), for the routes FastAPI serves:
    a redirect's Location keeps the scheme a TLS proxy saw. uvicorn applies it to every
    request when `proxy_headers` is on; Ember turns that off (see uvicorn_config), as the
    embeddings route reads neither the client's address nor the scheme, and parsing the
    headers cost its lone queries 0.01-0.17 ms (p50, servers alternating)."""
    trusted = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
    # uvicorn types ASGI apps more narrowly than Starlette; the two are the same protocol.
    applied = ProxyHeadersMiddleware(app, trusted_hosts=trusted)  # type: ignore[arg-type]
    return cast(ASGIApp, applied)


async def _unload_idle_models(registry: ModelRegistry, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        registry.unload_idle()


def _register_request_schema(app: FastAPI) -> None:
    """The embeddings route parses its own body (for size limits and clear errors); publish
    its request schema so the OpenAPI document stays complete."""
    original = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            schema = original()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["EmbeddingRequest"] = EmbeddingRequest.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
