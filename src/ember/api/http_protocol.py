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
descriptors; each now gets `REQUEST_HEAD_SECONDS` for a whole head. A body that stops arriving
held its connection (and its request's task) forever too: a request gets 408 and its connection
is closed once no byte of its body came for `REQUEST_BODY_IDLE_SECONDS`.

A request asking to upgrade to a protocol Ember does not speak (`curl --http2` asks for h2c) is
still a whole HTTP/1.1 request, to be served as such (RFC 9110 7.8). llhttp ends it at its head
and hands back the rest as the new protocol's bytes, which uvicorn dropped: the body was lost
(400 "empty document") and so were requests pipelined behind it.

A request that is not valid HTTP/1.1 gets an OpenAI error body naming what is wrong, as every
other refusal does, not uvicorn's plain-text "Invalid HTTP request received.".
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ember.api.errors import error_body

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


class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses a request it cannot parse with an OpenAI error body."""

    def send_400_response(self, msg: str) -> None:
        self.send_error_and_close(b"400 Bad Request", msg, "invalid_value")

    def send_error_and_close(self, status: bytes, message: str, code: str) -> None:
        """Answer with an OpenAI error body outside any request's cycle, then close."""
        body = error_body(message, "invalid_request_error", code=code)
        head = [b"HTTP/1.1 " + status + b"\r\n"]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


class UpgradeIgnoringHttpToolsProtocol(JsonErrorHttpToolsProtocol):
    """HttpToolsProtocol that serves a request asking for an upgrade it cannot make (anything
    but a WebSocket) as plain HTTP/1.1, body included."""

    _reading_framing_head = False

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            message = f"Invalid HTTP request: {exc}."
            self.logger.warning(message)
            self.send_400_response(message)
        except httptools.HttpParserUpgrade as upgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._read_on_without_upgrade(data[upgrade.args[0] :])

    def _read_on_without_upgrade(self, rest: bytes) -> None:
        """Read what follows the request's head as HTTP/1.1: its body, framed as its head said,
        then any further requests. A fresh parser is primed with a head carrying only that
        framing; the callbacks skip that head, so the body reaches the request's own cycle."""
        framing = b"".join(
            name + b": " + value + b"\r\n"
            for name, value in self.headers
            if name in (b"content-length", b"transfer-encoding")
        )
        self.cycle.more_body = True  # its task has not run yet: it reads the body to come
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's
        self._reading_framing_head = True
        try:
            self.parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n")
        finally:
            self._reading_framing_head = False
        if rest:
            self.data_received(rest)

    def on_message_begin(self) -> None:
        if not self._reading_framing_head:
            super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._reading_framing_head:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._reading_framing_head:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if not self._reading_framing_head:
            super().on_headers_complete()


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
        self.send_error_and_close(
            b"408 Request Timeout",
            f"The request body stopped arriving: no byte for {self.body_idle_seconds:g} s.",
            "request_timeout",
        )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        serving = self.cycle is not None and not self.cycle.response_complete
        if not serving and not self.transport.is_closing():
            self.transport.close()
