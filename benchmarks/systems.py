"""The systems under test, behind one small interface: embed a workload once, report timings.

HTTP systems (Ember, llama.cpp's server) are driven with httpx's sync client for sequential
requests, and queries also with the standard library's http.client. httpx drops idle
connections after a second, well before a server's keep-alive timeout (uvicorn: 5 s), so no
request is ever sent on a connection the server is closing. The concurrent workload uses a lean
asyncio client (lean_client.py), each of its clients on its own connection as independent
clients are.
"""

from __future__ import annotations

import asyncio
import http.client
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httpx
import numpy as np
import numpy.typing as npt
import orjson
from lean_client import LeanPoster
from workloads import Workload

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Memory:
    """Resident set of a process: now, and the most it ever held."""

    rss_bytes: int
    hwm_bytes: int


@dataclass(frozen=True)
class Burst:
    """One round of the concurrent workload: wall time and each client's latency."""

    seconds: float
    latencies: list[float]
    client_cpu_seconds: float


class System(Protocol):
    """What the measurement loop needs of Ember or a peer."""

    name: str

    def batch(self, workload: Workload) -> float:
        """Seconds to embed all of the workload's texts in one call or request."""
        ...

    def queries(self, workload: Workload, count: int) -> list[float] | None:
        """Latency of each of `count` one-text calls on the workload's only text; None when
        the system is measured on batches only."""
        ...

    def concurrent(self, workload: Workload) -> Burst | None:
        """Every text sent at once by its own client; None when the system has no server."""
        ...

    def first_vector(self, workload: Workload) -> Vector:
        """The normalised vector of the workload's first text, to check systems agree."""
        ...

    def memory(self) -> Memory | None: ...

    def close(self) -> None: ...


class ResponseError(RuntimeError):
    """A server answered, but not with the vectors asked for."""


def decode_vectors(response: httpx.Response, expected: int) -> list[list[float]]:
    """The embeddings of an OpenAI response, checked for count."""
    return parse_vectors(response.status_code, response.content, expected)


def parse_vectors(status: int, content: bytes, expected: int) -> list[list[float]]:
    if status != 200:
        raise ResponseError(f"HTTP {status}: {content[:300].decode(errors='replace')}")
    data = orjson.loads(content)["data"]
    if len(data) != expected:
        raise ResponseError(f"asked for {expected} vectors, got {len(data)}")
    return [item["embedding"] for item in sorted(data, key=lambda item: item["index"])]


def normalized(values: list[float]) -> Vector:
    vector = np.asarray(values, dtype=np.float32)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


class HttpSystem:
    """A server speaking the OpenAI embeddings API on loopback."""

    def __init__(
        self,
        name: str,
        base_url: str,
        model: str,
        timeout: float = 300.0,
        *,
        batches_only: bool = False,
    ) -> None:
        self.name = name
        self._batches_only = batches_only
        self._model = model
        self._url = f"{base_url}/v1/embeddings"
        self._timeout = timeout
        self._client = httpx.Client(timeout=timeout, limits=httpx.Limits(keepalive_expiry=1.0))
        self._memory_source: MemorySource | None = None

    def watch_memory(self, source: MemorySource) -> None:
        self._memory_source = source

    def _body(self, texts: list[str] | str) -> bytes:
        payload = {"model": self._model, "input": texts, "encoding_format": "float"}
        return orjson.dumps(payload)

    def _post(self, texts: list[str] | str, expected: int) -> list[list[float]]:
        response = self._client.post(
            self._url, content=self._body(texts), headers={"content-type": "application/json"}
        )
        return decode_vectors(response, expected)

    def batch(self, workload: Workload) -> float:
        body = list(workload.texts)
        started = time.perf_counter()
        self._post(body, len(body))
        return time.perf_counter() - started

    def queries(self, workload: Workload, count: int) -> list[float] | None:
        if self._batches_only:
            return None
        (text,) = workload.texts
        if workload.client == "stdlib":
            return self._stdlib_queries(text, count)
        latencies = []
        for _ in range(count):
            started = time.perf_counter()
            self._post(text, 1)
            latencies.append(time.perf_counter() - started)
        return latencies

    def _stdlib_queries(self, text: str, count: int) -> list[float]:
        """The same requests from http.client on one keep-alive connection, opened for the
        round. A sequential client's CPU time adds to each latency it measures: this one
        spends ~0.3 ms per request here (decoding the vector included), httpx ~1 ms."""
        parts = urlsplit(self._url)
        connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port or 80, timeout=self._timeout
        )
        body = self._body(text)
        headers = {"Content-Type": "application/json"}
        latencies = []
        try:
            for _ in range(count):
                started = time.perf_counter()
                connection.request("POST", parts.path, body, headers)
                response = connection.getresponse()
                parse_vectors(response.status, response.read(), 1)
                latencies.append(time.perf_counter() - started)
        finally:
            connection.close()
        return latencies

    def concurrent(self, workload: Workload) -> Burst | None:
        if self._batches_only:
            return None
        cpu_started = time.process_time()
        started = time.perf_counter()
        latencies = asyncio.run(self._burst(list(workload.texts)))
        seconds = time.perf_counter() - started
        return Burst(seconds, latencies, time.process_time() - cpu_started)

    async def _burst(self, texts: list[str]) -> list[float]:
        poster = LeanPoster(self._url)
        bodies = [self._body(text) for text in texts]

        async def one(body: bytes) -> float:
            started = time.perf_counter()
            reply = await asyncio.wait_for(poster.post(body), self._timeout)
            parse_vectors(reply.status, reply.body, 1)
            return time.perf_counter() - started

        return list(await asyncio.gather(*(one(body) for body in bodies)))

    def first_vector(self, workload: Workload) -> Vector:
        return normalized(self._post([workload.texts[0]], 1)[0])

    def memory(self) -> Memory | None:
        return self._memory_source() if self._memory_source is not None else None

    def close(self) -> None:
        self._client.close()


class MemorySource(Protocol):
    def __call__(self) -> Memory | None: ...
