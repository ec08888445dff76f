"""Trusted hosts: answer only to Host headers we expect, which stops DNS-rebinding pages."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from ember.api.errors import response_for
from ember.errors import HostNotAllowed

LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host in {"0.0.0.0", "::", ""}


def allowed_hosts(bind_host: str, extra: Iterable[str]) -> frozenset[str] | None:
    """The Host names to accept; None accepts any (a wildcard bind with no list given)."""
    extra = [host.lower() for host in extra]
    if "*" in extra or (is_wildcard(bind_host) and not extra):
        return None
    return LOCAL_NAMES | {bind_host.lower(), *extra}


def host_name(header: str) -> str:
    """The host part of a Host header: `[::1]:1337` → `::1`, `a.b:80` → `a.b`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class TrustedHostMiddleware:
    """Refuses requests whose Host header is not allowed, with the error table's answer to
    HostNotAllowed."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str]) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        header = headers.get(b"host", b"").decode("latin-1")
        if host_name(header) in self.hosts:
            await self.app(scope, receive, send)
            return
        refusal = HostNotAllowed("Host not allowed: add it with EMBER_ALLOWED_HOSTS.")
        await response_for(refusal)(scope, receive, send)
