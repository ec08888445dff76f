"""Per-request observation: one structured access-log line and the request metrics."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.api.metrics import Metrics

access_log = logging.getLogger("ember.access")


class ObserveMiddleware:
    """Times each HTTP request and records what the route reported in `scope['state']`."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe_request(route, status, elapsed)
            if access_log.isEnabledFor(logging.INFO):
                details: dict[str, Any] = scope.get("state", {}).get("access", {})
                access_log.info(
                    "%s",
                    orjson.dumps(
                        {
                            "method": scope["method"],
                            "path": scope["path"],
                            "status": status,
                            "latency_ms": round(elapsed * 1000, 2),
                            **details,
                        }
                    ).decode(),
                )
