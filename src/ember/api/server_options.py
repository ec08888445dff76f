"""`OPTIONS *`: what the server as a whole takes (RFC 9110 9.3.7), a ping that needs no path.

uvicorn hands the asterisk-form target on as the path `*`, which no route matches: it got a
404 naming the path `/*`. It is answered here, before routing, with no key needed (as
/health): the answer tells only the methods, which any 405 tells too.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send


class ServerOptions:
    """Answers `OPTIONS *` with 200, `Allow` naming `methods` and an empty body; everything
    else goes on to `app`. Metrics label its requests with the route `*`."""

    path = "*"

    def __init__(self, app: ASGIApp, methods: Iterable[str]) -> None:
        self.app = app
        self.allow = ", ".join(sorted({*methods, "OPTIONS"})).encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "*" or scope["method"] != "OPTIONS":
            await self.app(scope, receive, send)
            return
        scope["route"] = self
        # 200, not 204: an OPTIONS answer without content must say Content-Length: 0, which a
        # 204 must not carry (RFC 9110 9.3.7, 8.6).
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"allow", self.allow), (b"content-length", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": b""})
