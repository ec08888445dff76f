"""A minimal HTTP/1.1 POST over asyncio streams, for the concurrent-clients workload.

The benchmark's clients share the machine's two cores with the server they measure: httpx's
AsyncClient spends ~1 ms of CPU per request (60-70 ms per 64-request burst), which the servers
then lack. Real clients run in their own processes or on other machines; this client costs a
few tens of microseconds per request, so the burst measures the servers. Every system gets
the same client. It reads responses framed by Content-Length, which all servers here send.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


class LeanPoster:
    """POSTs JSON bodies to one URL, one fresh connection per request."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._head = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/json\r\nConnection: close\r\nContent-Length: "
        ).encode()

    async def post(self, body: bytes) -> Reply:
        reader, writer = await asyncio.open_connection(self._host, self._port)
        try:
            writer.write(self._head + str(len(body)).encode() + b"\r\n\r\n" + body)
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in header_lines if line)
            }
            if "content-length" not in headers:
                raise ValueError(f"response without Content-Length: {headers}")
            content = await reader.readexactly(int(headers["content-length"]))
            return Reply(status, content)
        finally:
            writer.close()
