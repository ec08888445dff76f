"""API-key check: Bearer or X-Api-Key, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from ember.errors import AuthenticationFailed


def presented_key(request: Request) -> str | None:
    """The key the client sent, from `Authorization: Bearer KEY` or `X-Api-Key: KEY`."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return request.headers.get("x-api-key")


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: passes when no key is configured or the right one is presented."""
    expected: str | None = request.app.state.settings.api_key
    if not expected:
        return
    given = presented_key(request)
    if given is None:
        raise AuthenticationFailed(
            "Missing API key: send it as 'Authorization: Bearer YOUR_KEY' (or 'X-Api-Key')."
        )
    # Header values arrive as bytes decoded as latin-1: compare those bytes with the key's
    # UTF-8, which is what a client sends for a non-ASCII key.
    if not hmac.compare_digest(given.encode("latin-1"), expected.encode()):
        raise AuthenticationFailed("Incorrect API key provided.")
