"""CORS for the origins EMBER_CORS_ORIGINS lists, open to what browser clients send.

The OpenAI JS SDK in a browser sends its own headers (`X-Stainless-Lang`, `-OS`, `-Arch`,
`-Runtime`, `-Package-Version`, `-Retry-Count`...), so a preflight allowing only Authorization and
Content-Type was refused and the SDK could not call Ember at all. The origin is what CORS guards;
any header is allowed to a listed origin. So is a page on a public origin reaching this local
server (Chrome's Private Network Access preflight), since the operator listed it.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp

from ember.api.errors import response_for
from ember.errors import OriginNotAllowed

# What a browser client may read of an answer beyond the safelisted headers: the SDKs read
# Retry-After to back off; a 415's Accept-Encoding names the codings to compress with
# instead; Ember's own headers report cache hits and re-tokenisation.
EXPOSED_HEADERS = ("Retry-After", "Accept-Encoding", "X-Ember-Cache-Hits", "X-Ember-Token-Ids")


class Cors(CORSMiddleware):
    """CORSMiddleware whose refused preflights get the error table's answer to OriginNotAllowed,
    not plain text."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=["GET", "HEAD", "POST", "OPTIONS"],
            allow_headers=["*"],
            allow_private_network=True,
            expose_headers=EXPOSED_HEADERS,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        refusal = response_for(
            OriginNotAllowed(
                f"CORS preflight refused, not allowed: {refused} (the origins allowed are "
                "listed in EMBER_CORS_ORIGINS)."
            )
        )
        # The preflight's own headers (Vary, the methods and headers allowed) go along.
        for name, value in response.headers.items():
            if name not in ("content-length", "content-type"):
                refusal.headers[name] = value
        return refusal
