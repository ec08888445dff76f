"""uvicorn's httptools protocol, sending each response's head and body in one write, and
closing connections whose request head or body stalls (on the request reading of
http_requests).

uvicorn writes a response's head as soon as the app starts the response, and the body on its
own when it follows, in the same event-loop step. On loopback every write is delivered at once:
the client wakes for a head it cannot use without the body, and the server pays a second send.
Holding the head until the next write (or the end of the loop step, whichever comes first)
saves 0.1-0.2 ms of a lone query's ~3 ms round trip on 2 cores (servers alternating).

uvicorn also keeps a connection open for as long as its request head takes: its keep-alive
timer stops at the first byte, and a fresh connection has none. 800 connections sending half
a head stayed open indefinitely, and enough of them would use up the process's file
descriptors; each now gets `REQUEST_HEAD_SECONDS` for a whole head. A body that stops arriving
held its connection (and its request's task) forever too: a request gets 408 and its connection
is closed once no byte of its body came for `REQUEST_BODY_IDLE_SECONDS`.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from ember.api.http_requests import UpgradeIgnoringHttpToolsProtocol
from ember.errors import RequestBodyStalled

_RESPONSE_HEAD_START = b"HTTP/1.1 "
# Bodies up to this size are joined to their head; a larger one's own send costs little beside
# it, and joining would copy it (a 2048-input response is megabytes).
_JOINED_AT_MOST = 64 * 1024
# From a connection's start, or its last response, to the end of the next request's head.
REQUEST_HEAD_SECONDS = 30.0
# Without a byte of the request's body, while the server is reading it.
REQUEST_BODY_IDLE_SECONDS = 30.0


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


class HeadHoldingHttpToolsProtocol(UpgradeIgnoringHttpToolsProtocol):
    """HttpToolsProtocol on a HeadHoldingTransport."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        holding = HeadHoldingTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, holding))


class GuardedHttpToolsProtocol(HeadHoldingHttpToolsProtocol):
    """HeadHoldingHttpToolsProtocol that closes a connection whose next request head has not
    arrived within REQUEST_HEAD_SECONDS, and answers 408 to a request whose body stops arriving
    for REQUEST_BODY_IDLE_SECONDS; a request being served is never cut."""

    head_seconds = REQUEST_HEAD_SECONDS
    body_idle_seconds = REQUEST_BODY_IDLE_SECONDS
    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _body_seen = 0.0  # loop time of the body's last bytes (or of its head)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._disarm_body_timer()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        super().on_headers_complete()
        # Armed for every request, bodiless ones included: their message completes in the
        # same parser call, which disarms it (one timer handle per request).
        self._body_seen = self.loop.time()
        self._disarm_body_timer()
        self._body_timer = self.loop.call_later(self.body_idle_seconds, self._body_timed_out)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._body_seen = self.loop.time()  # the timer checks this when it fires

    def on_message_complete(self) -> None:
        self._disarm_body_timer()
        super().on_message_complete()

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

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        """No byte of the body for body_idle_seconds: 408 and close, unless this server is
        what paused the reading (the app has not taken the body so far) or is answering."""
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # this server stopped reading, not the client sending
            self._body_seen = self.loop.time()
        idle = self.loop.time() - self._body_seen
        if idle < self.body_idle_seconds:
            left = self.body_idle_seconds - idle
            self._body_timer = self.loop.call_later(left, self._body_timed_out)
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            if cycle.response_complete:  # answered without reading the whole body
                self.transport.close()
            return  # an answer being sent is never cut
        self.send_refusal_and_close(
            RequestBodyStalled(
                f"The request body stopped arriving: no byte for {self.body_idle_seconds:g} s."
            )
        )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        serving = self.cycle is not None and not self.cycle.response_complete
        if not serving and not self.transport.is_closing():
            self.transport.close()
