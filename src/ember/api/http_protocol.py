"""uvicorn's httptools protocol, sending each response's head and body in one write, and
closing connections whose request head stalls.

uvicorn writes a response's head as soon as the app starts the response, and the body on its
own when it follows, in the same event-loop step. On loopback every write is delivered at once:
the client wakes for a head it cannot use without the body, and the server pays a second send.
Holding the head until the next write (or the end of the loop step, whichever comes first)
saves 0.1-0.2 ms of a lone query's ~3 ms round trip on 2 cores (servers alternating).

uvicorn also keeps a connection open for as long as its request head takes: its keep-alive
timer stops at the first byte, and a fresh connection has none. 800 connections sending half
a head stayed open indefinitely, and enough of them would use up the process's file
descriptors; each now gets `REQUEST_HEAD_SECONDS` for a whole head.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_RESPONSE_HEAD_START = b"HTTP/1.1 "
# Bodies up to this size are joined to their head; a larger one's own send costs little beside
# it, and joining would copy it (a 2048-input response is megabytes).
_JOINED_AT_MOST = 64 * 1024
# From a connection's start, or its last response, to the end of the next request's head.
REQUEST_HEAD_SECONDS = 30.0


class HeadHoldingTransport:
    """Wraps a transport: a write that starts a response is held and joined to the next.

    Bytes always leave in the order written, and a held head is flushed before any other
    transport call that could end the connection, and at the latest when the loop step ends;
    the only thing the check on the bytes decides is whether a write waits.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held:
            held, self._held = self._held, b""
            if len(data) <= _JOINED_AT_MOST:
                self._transport.write(held + bytes(data))
                return
            self._transport.write(held)  # a large body is not copied to save one send
        elif bytes(data[: len(_RESPONSE_HEAD_START)]) == _RESPONSE_HEAD_START:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._held:
            held, self._held = self._held, b""
            if not self._transport.is_closing():
                self._transport.write(held)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return len(self._held) + self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeadHoldingHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol on a HeadHoldingTransport."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        holding = HeadHoldingTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, holding))


class GuardedHttpToolsProtocol(HeadHoldingHttpToolsProtocol):
    """HeadHoldingHttpToolsProtocol that closes a connection whose next request head has not
    arrived within REQUEST_HEAD_SECONDS; a request being served is never cut."""

    head_seconds = REQUEST_HEAD_SECONDS
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.head_seconds, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        serving = self.cycle is not None and not self.cycle.response_complete
        if not serving and not self.transport.is_closing():
            self.transport.close()
