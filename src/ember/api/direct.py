"""POST /v1/embeddings answered before FastAPI, past its middleware stack and routing.

FastAPI's exception middleware, router and dependency solving cost about 0.3 ms of event-loop
time per request (py-spy on a one-query loop): a fifth of a 10-token query's compute, and CPU
that 64 concurrent clients take from the engine. The embeddings route needs none of it: it
reads its own body and raises domain errors. FastAPI keeps the route for the OpenAPI
document; both paths run the same endpoint function, with the same key check and errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ember.api.auth import require_api_key
from ember.api.errors import internal_error_response, response_for
from ember.errors import EmberError

Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoute:
    """Serves one (method, path), and the `aliases` of that path, with `endpoint`; everything
    else goes on to `others` (by default `app`, the FastAPI app whose state the endpoint
    reads). Metrics label an alias's requests with `path`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        method: str,
        path: str,
        endpoint: Endpoint,
        aliases: Collection[str] = (),
        others: ASGIApp | None = None,
    ) -> None:
        self.app = app
        self.others = others or app
        self.method = method
        self.path = path
        self.paths = frozenset({path, *aliases})
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] not in self.paths
            or scope["method"] != self.method
        ):
            await self.others(scope, receive, send)
            return
        scope["app"] = self.app  # as FastAPI would set them: the endpoint reads app.state,
        scope["route"] = self  # and metrics are labelled by the route's path
        request = Request(scope, receive, send)
        try:
            await require_api_key(request)
            response = await self.endpoint(request)
        except EmberError as exc:
            response = response_for(exc)
        except Exception as exc:  # what FastAPI's handler for Exception answers on other routes
            response = internal_error_response(exc)
        await response(scope, receive, send)
