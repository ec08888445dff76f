"""How Ember's HTTP protocol reads requests that uvicorn's httptools protocol mishandles.

A request asking to upgrade to a protocol Ember does not speak (`curl --http2` asks for h2c) is
still a whole HTTP/1.1 request, to be served as such (RFC 9110 7.8). llhttp ends it at its head
and hands back the rest as the new protocol's bytes, which uvicorn dropped: the body was lost
(400 "empty document") and so were requests pipelined behind it.

A request that is not valid HTTP/1.1 gets an OpenAI error body naming what is wrong, as every
other refusal does, not uvicorn's plain-text "Invalid HTTP request received.".
"""

from __future__ import annotations

from http import HTTPStatus

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ember.api.errors import response_for
from ember.errors import EmberError, InvalidRequest


class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses a request it cannot parse with the error table's answer."""

    def send_400_response(self, msg: str) -> None:
        self.send_refusal_and_close(InvalidRequest(msg))

    def send_refusal_and_close(self, error: EmberError) -> None:
        """Answer `error` as the error table renders it, outside any request's cycle, then
        close: status, body and headers are the table's, as for a refusal inside the app."""
        response = response_for(error)
        status = HTTPStatus(response.status_code)
        head = [b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("ascii"))]
        head += [
            name + b": " + value + b"\r\n"
            for name, value in [*self.server_state.default_headers, *response.raw_headers]
        ]
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + bytes(response.body))
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
