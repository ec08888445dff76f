"""sentence-transformers as a peer: a worker process on the peer's own Python, driven by pipe.

The worker times each call itself, so pipe and JSON costs stay out of its figures, as they
would for an application that imports sentence-transformers.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from systems import Burst, Memory, Vector, normalized
from workloads import Workload

WORKER = Path(__file__).with_name("st_worker.py")
ST_BATCH_SIZE = 32  # SentenceTransformer.encode's default


def worker_environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


class SentenceTransformersSystem:
    """sentence-transformers in-process (in its worker), encode(batch_size=32)."""

    def __init__(self, python: str, model_folder: Path, workloads: list[Workload]) -> None:
        self.name = "sentence-transformers"
        self._process = subprocess.Popen(
            [python, str(WORKER), str(model_folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=worker_environment(),
            text=True,
        )
        ready = self._read()
        if not ready.get("ready"):
            raise RuntimeError(f"sentence-transformers worker did not start: {ready}")
        for workload in workloads:
            self._call({"op": "define", "name": workload.name, "texts": list(workload.texts)})

    def _read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"sentence-transformers worker exited ({self._process.poll()})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"sentence-transformers worker: {reply['error']}")
        return reply

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        return self._read()

    def batch(self, workload: Workload) -> float:
        reply = self._call({"op": "encode", "name": workload.name, "batch_size": ST_BATCH_SIZE})
        if reply["count"] != len(workload.texts):
            raise RuntimeError(f"asked for {len(workload.texts)} vectors, got {reply['count']}")
        return float(reply["seconds"])

    def queries(self, workload: Workload, count: int) -> list[float]:
        reply = self._call({"op": "queries", "name": workload.name, "count": count})
        return [float(seconds) for seconds in reply["latencies"]]

    def concurrent(self, workload: Workload) -> Burst | None:
        return None  # a library, not a server: nothing to send concurrent requests to

    def first_vector(self, workload: Workload) -> Vector:
        reply = self._call({"op": "encode", "name": workload.name, "batch_size": ST_BATCH_SIZE})
        return normalized(reply["first"])

    def memory(self) -> Memory | None:
        reply = self._call({"op": "rss"})
        return Memory(int(reply["rss_bytes"]), int(reply["hwm_bytes"]))

    def close(self) -> None:
        try:
            self._call({"op": "quit"})
            self._process.wait(timeout=30)
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait(timeout=30)


def cold_start(python: str, model_folder: Path, timeout: float = 120.0) -> tuple[float, Memory]:
    """Seconds from starting a fresh Python to its first vector, and its memory then."""
    started = time.perf_counter()
    done = subprocess.run(
        [python, str(WORKER), str(model_folder), "--cold-start"],
        env=worker_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    seconds = time.perf_counter() - started
    reply = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    if not reply.get("first_vector"):
        raise RuntimeError(f"sentence-transformers cold start printed {done.stdout!r}")
    return seconds, Memory(int(reply["rss_bytes"]), int(reply["hwm_bytes"]))
