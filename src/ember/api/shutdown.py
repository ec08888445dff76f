"""Requests cut short when the shutdown grace period ends get a 503 to retry, not a bare 500."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.api.errors import response_for
from ember.errors import ShuttingDown


class CutShortMiddleware:
    """When the server cancels a request that has not started its response (uvicorn does, to
    every request still running when `shutdown_grace_seconds` end), answer the error
    table's ShuttingDown (503 + Retry-After).

    Only the server cancels a request's task: the app's own cancellations stay inside it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except asyncio.CancelledError:
            if started:
                raise
            refusal = ShuttingDown(
                "The server is shutting down and could not finish this request; retry it."
            )
            await response_for(refusal)(scope, receive, send)
