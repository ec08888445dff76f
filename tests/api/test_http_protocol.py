"""The response head waits for its body, so both leave in one write, and nothing is lost."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.api.errors import response_for
from ember.api.http_protocol import GuardedHttpToolsProtocol, HeadHoldingTransport
from ember.errors import InvalidRequest, RequestBodyStalled
from ember.settings import ServerSettings
from tests.support.models import write_fake_model
from tests.support.server import serve_in_thread

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n"


class RecordingTransport(asyncio.Transport):
    """The socket end: what was written, in which calls, and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name == "peername" else default


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def socket_end() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture
def transport(
    socket_end: RecordingTransport, loop: asyncio.AbstractEventLoop
) -> HeadHoldingTransport:
    return HeadHoldingTransport(socket_end, loop)


def end_the_loop_step(loop: asyncio.AbstractEventLoop) -> None:
    """Run what the transport scheduled with call_soon, as the end of a loop step would."""
    loop.run_until_complete(asyncio.sleep(0))


def test_head_and_body_leave_in_one_write(
    socket_end: RecordingTransport, transport: HeadHoldingTransport, loop: asyncio.AbstractEventLoop
) -> None:
    transport.write(HEAD)
    assert socket_end.writes == []
    assert transport.get_write_buffer_size() == len(HEAD)
    transport.write(b"body")
    assert socket_end.writes == [HEAD + b"body"]
    end_the_loop_step(loop)  # the scheduled flush finds nothing held
    assert socket_end.writes == [HEAD + b"body"]


def test_a_large_body_follows_its_head_uncopied(
    socket_end: RecordingTransport, transport: HeadHoldingTransport
) -> None:
    body = b"x" * (1 << 20)
    transport.write(HEAD)
    transport.write(body)
    assert socket_end.writes == [HEAD, body]


def test_a_head_alone_leaves_when_the_loop_step_ends(
    socket_end: RecordingTransport, transport: HeadHoldingTransport, loop: asyncio.AbstractEventLoop
) -> None:
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    end_the_loop_step(loop)
    assert socket_end.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]


def test_closing_sends_a_held_head_first(
    socket_end: RecordingTransport, transport: HeadHoldingTransport
) -> None:
    transport.write(HEAD + b"body")  # a whole response in one write is held too
    transport.close()
    assert socket_end.writes == [HEAD + b"body"]
    assert socket_end.closed


def test_other_bytes_pass_straight_through_in_order(
    socket_end: RecordingTransport, transport: HeadHoldingTransport
) -> None:
    transport.write(b"chunk 1")
    transport.writelines([b"chunk ", b"2"])
    assert socket_end.writes == [b"chunk 1", b"chunk 2"]
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)


def test_pipelined_requests_get_whole_responses_in_order(tmp_path: Path) -> None:
    """Two requests in one packet: two complete responses come back, in order."""
    with serve_in_thread(ServerSettings(home=tmp_path)) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            request = f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            connection.sendall(request + request.replace(b"/health", b"/v1/models"))
            received = b""
            while received.count(b"HTTP/1.1 200 OK") < 2 or not received.endswith(b"}"):
                chunk = connection.recv(65536)
                assert chunk, f"connection closed early after {received!r}"
                received += chunk
    first, second = received.split(b"HTTP/1.1 200 OK")[1:]
    assert b'"status"' in first
    assert b'"object":"list"' in second


def test_a_stalled_request_head_is_closed_and_others_are_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GuardedHttpToolsProtocol, "head_seconds", 0.5)
    with serve_in_thread(ServerSettings(home=tmp_path)) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        with (
            socket.create_connection((host, int(port)), timeout=10) as stalled,
            socket.create_connection((host, int(port)), timeout=10) as working,
        ):
            stalled.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            request = f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            for _ in range(3):  # a kept-alive connection that keeps asking stays open
                working.sendall(request)
                assert working.recv(65536).startswith(b"HTTP/1.1 200 OK")
                time.sleep(0.3)
            assert stalled.recv(65536) == b""  # closed by the server, no response


def test_a_kept_alive_connection_idle_past_5_s_is_still_served(tmp_path: Path) -> None:
    """An idle connection is closed REQUEST_HEAD_SECONDS after its last response. uvicorn's
    own keep-alive timer closed it after 5 s, the very expiry of httpx's pool (and so of the
    openai client's): a request sent on a connection about to expire met its close and failed
    with ReadError (2 of 4,000 requests in a soak whose clients paused 2.5-5 s)."""
    with serve_in_thread(ServerSettings(home=tmp_path)) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            request = f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            connection.sendall(request)
            assert connection.recv(65536).startswith(b"HTTP/1.1 200 OK")
            time.sleep(5.5)
            connection.sendall(request)
            assert connection.recv(65536).startswith(b"HTTP/1.1 200 OK")


def test_a_kept_alive_connection_is_closed_once_idle_for_the_head_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GuardedHttpToolsProtocol, "head_seconds", 0.5)
    with serve_in_thread(ServerSettings(home=tmp_path)) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            connection.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert connection.recv(65536).startswith(b"HTTP/1.1 200 OK")
            assert connection.recv(65536) == b""  # closed by the server after 0.5 s idle


def exchange(server_url: str, request: bytes, responses: int) -> bytes:
    """Send raw bytes on one connection; read until `responses` whole JSON bodies arrived."""
    host, port = server_url.removeprefix("http://").split(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        while received.count(b"HTTP/1.1 ") < responses or not received.endswith(b"}"):
            chunk = connection.recv(65536)
            assert chunk, f"connection closed early after {received!r}"
            received += chunk
    return received


H2C_UPGRADE = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_ignored_upgrade_request_keeps_its_body(tmp_path: Path, framing: str) -> None:
    """`curl --http2` on http:// asks to upgrade to h2c; a server that stays on HTTP/1.1 must
    still read the request's body (RFC 9110 7.8), and the next request on the connection."""
    write_fake_model(tmp_path / "models", "tiny")
    body = b'{"model": "tiny", "input": "hello"}'
    if framing == "chunked":
        framed = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        framed = b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    upgrade = b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n" + H2C_UPGRADE + framed
    then = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with serve_in_thread(ServerSettings(home=tmp_path)) as server:
        received = exchange(server.base_url, upgrade + then, responses=2)
    first, second = received.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 OK"), first
    assert b'"object":"embedding"' in first
    assert second.startswith(b"200 OK"), second
    assert b'"status":"ok"' in second


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"post /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /v1/models/\xc3\xa9 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ],
    ids=["lowercase method", "negative length", "length and chunked", "raw UTF-8 path"],
)
def test_a_malformed_request_gets_an_openai_error_body(
    tmp_path: Path, request_bytes: bytes
) -> None:
    with serve_in_thread(ServerSettings(home=tmp_path)) as server:
        received = exchange(server.base_url, request_bytes, responses=1)
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    assert status_line == "HTTP/1.1 400 Bad Request", received
    message = json.loads(body)["error"]["message"]
    assert message.startswith("Invalid HTTP request: "), message  # llhttp's reason follows
    assert json.loads(body) == {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_value",
        }
    }
    # The error table's answer to InvalidRequest, byte for byte, with its headers.
    table = response_for(InvalidRequest(message))
    assert table.status_code == 400
    assert body == table.body
    assert headers["content-type"] == table.headers["content-type"]
    assert headers["content-length"] == table.headers["content-length"]
    assert headers["connection"] == "close"


def read_until_closed(connection: socket.socket) -> bytes:
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_stalled_request_body_gets_408_and_others_are_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, framing: str
) -> None:
    """A body that stops arriving held its connection and its request forever."""
    monkeypatch.setattr(GuardedHttpToolsProtocol, "body_idle_seconds", 0.5)
    write_fake_model(tmp_path / "models", "tiny")
    if framing == "chunked":
        start = b"Transfer-Encoding: chunked\r\n\r\n5\r\n" + b'{"mod'
    else:
        start = b"Content-Length: 100\r\n\r\n" + b'{"mod'
    with serve_in_thread(ServerSettings(home=tmp_path)) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as stalled:
            stalled.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n" + start)
            began = time.monotonic()
            served = exchange(
                server.base_url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 1
            )
            assert served.startswith(b"HTTP/1.1 200 OK")
            received = read_until_closed(stalled)  # the server closes it after the 408
            waited = time.monotonic() - began
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), received
    assert json.loads(body) == {
        "error": {
            "message": "The request body stopped arriving: no byte for 0.5 s.",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_timeout",
        }
    }
    stalled_error = RequestBodyStalled("The request body stopped arriving: no byte for 0.5 s.")
    assert body == response_for(stalled_error).body  # the error table's answer
    assert 0.4 < waited < 5


def test_a_slow_body_that_keeps_coming_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit is on silence, not on the body's whole time: bytes every 0.2 s for 1.2 s
    under a 0.5 s limit."""
    monkeypatch.setattr(GuardedHttpToolsProtocol, "body_idle_seconds", 0.5)
    write_fake_model(tmp_path / "models", "tiny")
    body = b'{"model": "tiny", "input": "hello"}'
    with serve_in_thread(ServerSettings(home=tmp_path)) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            for piece in (body[:6], body[6:12], body[12:18], body[18:24], body[24:30]):
                slow.sendall(piece)
                time.sleep(0.2)
            slow.sendall(body[30:])
            received = b""
            while not received.endswith(b"}"):
                chunk = slow.recv(65536)
                assert chunk, f"closed after {received!r}"
                received += chunk
    assert received.startswith(b"HTTP/1.1 200 OK"), received
    assert b'"object":"embedding"' in received


def test_options_asterisk_names_the_methods_of_the_server(tmp_path: Path) -> None:
    """`OPTIONS *` asks about the server, not a path (RFC 9110 9.3.7); uvicorn hands it on as
    the path `*`, which got a 404 naming `/*`. No key is needed, as for /health. http.client
    sends the asterisk form as given (httpx would not)."""
    with serve_in_thread(ServerSettings(home=tmp_path, api_key="k")) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            connection.request("OPTIONS", "*")
            response = connection.getresponse()
            body = response.read()
            connection.request("GET", "/health")  # the connection goes on
            after = connection.getresponse()
            after.read()
        finally:
            connection.close()
    assert response.status == 200
    assert response.getheader("allow") == "GET, HEAD, OPTIONS, POST"
    assert response.getheader("content-length") == "0"  # RFC 9110 9.3.7
    assert body == b""
    assert after.status == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET * HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b"POST * HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: 16\r\n\r\n"
        b'{"input": "hi"}\n',
    ],
    ids=["GET", "POST"],
)
def test_another_method_on_the_asterisk_target_is_a_bad_request(
    tmp_path: Path, request_bytes: bytes
) -> None:
    """RFC 9112 3.2.4 allows the target `*` for OPTIONS only; `GET *` got a 404 naming the
    path `/*`, as though some path might answer it. Malformed, it is refused before the key
    is asked for."""
    with serve_in_thread(ServerSettings(home=tmp_path, api_key="k")) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(request_bytes)
            received = b""
            while chunk := raw.recv(65536):  # Connection: close ends it
                received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    assert status_line == "HTTP/1.1 400 Bad Request", received
    assert headers["content-type"] == "application/json"
    method = request_bytes.split(b" ", 1)[0].decode()
    assert json.loads(body) == {
        "error": {
            "message": f"Invalid URL ({method} *): the target * is for OPTIONS only "
            "(RFC 9112 3.2.4); other methods take a path, such as /v1/embeddings.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_value",
        }
    }
