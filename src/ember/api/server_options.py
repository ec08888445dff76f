"""`OPTIONS *`: what the server as a whole takes (RFC 9110 9.3.7), a ping that needs no path.

uvicorn hands the asterisk-form target on as the path `*`, which no route matches: it got a
404 naming the path `/*`. It is answered here, before routing, with no key needed (as
/health): the answer tells only the methods, which any 405 tells too. With any other method
the target is malformed (RFC 9112 3.2.4 allows `*` for OPTIONS only): a 400, not a 404 that
sent the client looking for a path.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from ember.api.errors import response_for
from ember.errors import InvalidRequest


class ServerOptions:
    """Answers `OPTIONS *` with 200, `Allow` naming `methods` and an empty body, and another
    method on `*` with a 400; everything else goes on to `app`. Metrics label both with the
    route `*`."""

    path = "*"

    def __init__(self, app: ASGIApp, methods: Iterable[str]) -> None:
        self.app = app
        self.allow = ", ".join(sorted({*methods, "OPTIONS"})).encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "*":
            await self.app(scope, receive, send)
            return
        scope["route"] = self
        if scope["method"] != "OPTIONS":
            refusal = InvalidRequest(
                f"Invalid URL ({scope['method']} *): the target * is for OPTIONS only "
                "(RFC 9112 3.2.4); other methods take a path, such as /v1/embeddings."
            )
            await response_for(refusal)(scope, receive, send)
            return
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
