"""Load test: concurrent clients against a real `ember serve`, every vector checked.

Starts `ember serve` on a loopback port with the real default model (pulled into --home on
the first run, or served from --models-dir), embeds each text of a pool once, alone, as the
reference, then runs --clients concurrent clients for --duration seconds, each sending mixed
requests: single strings, batches of 1-32 texts, token-id arrays, float or base64. Every
returned vector is compared with its text's reference, so a response carrying another
request's vectors (or another row's) is caught. Prints requests served, errors by status,
latency percentiles and throughput; exits 1 on any 5xx, transport error or wrong vector.

    python benchmarks/load_test.py --duration 120
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

MODEL = "all-MiniLM-L6-v2"
TOLERANCE = 1e-4  # batched vs alone: padding changes float sums in the last digits only
UNICODE = [
    "Café crème, naïve façade, jalapeño, Ångström and São Paulo.",
    "東京は日本の首都です。人口は約1400万人です。",
    "Привет, мир! Как дела?",
    "مرحبا بالعالم، كيف حالك اليوم؟",
    "Emoji 🔥🚀 and symbols ∑ ∫ ≠ ≤ in one line.",
]

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ReferencePool:
    """Texts, their token ids, and the vector each gets when embedded alone."""

    texts: list[str]
    token_ids: list[list[int]]
    vectors: list[Vector]


@dataclass
class LoadReport:
    seconds: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    inputs: int = 0
    vectors_checked: int = 0
    mismatches: list[str] = field(default_factory=list)
    largest_difference: float = 0.0

    @property
    def served(self) -> int:
        return self.statuses["200"]

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status.startswith("5"))

    @property
    def transport_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if not status.isdigit())

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]

    def lines(self) -> list[str]:
        statuses = ", ".join(
            f"{status}: {count}" for status, count in sorted(self.statuses.items())
        )
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.kinds.items()))
        return [
            f"duration: {self.seconds:.1f} s",
            f"requests served: {self.served} ({self.served / self.seconds:.1f}/s); "
            f"inputs embedded: {self.inputs} ({self.inputs / self.seconds:.1f}/s)",
            f"responses by status: {statuses}",
            f"request mix: {kinds}",
            f"latency: p50 {self.percentile(0.5) * 1000:.0f} ms, "
            f"p90 {self.percentile(0.9) * 1000:.0f} ms, "
            f"p99 {self.percentile(0.99) * 1000:.0f} ms, "
            f"max {self.percentile(1.0) * 1000:.0f} ms",
            f"vectors checked: {self.vectors_checked}, wrong: {len(self.mismatches)} "
            f"(largest difference from the single-request reference: "
            f"{self.largest_difference:.1e})",
        ]


def vocabulary_words(models_dir: Path) -> list[str]:
    """Whole words of the model's vocabulary (not word pieces), sorted."""
    vocabulary = Tokenizer.from_file(str(models_dir / MODEL / "tokenizer.json")).get_vocab()
    return sorted(
        word for word in vocabulary if word.isalpha() and word.isascii() and len(word) > 2
    )


def make_texts(words: list[str], count: int, seed: int) -> list[str]:
    """Distinct texts of 1 to 80 random words, a few of them not ASCII."""
    rng = random.Random(seed)
    texts = list(UNICODE)
    while len(texts) < count:
        length = rng.choice([rng.randint(1, 6), rng.randint(5, 25), rng.randint(20, 80)])
        text = " ".join(rng.choice(words) for _ in range(length)).capitalize() + "."
        if text not in texts:
            texts.append(text)
    return texts[:count]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serving(home: Path, models_dir: Path | None, log: Path) -> Iterator[tuple[str, Path]]:
    """`ember serve` on a free loopback port; yields its URL and models folder, then stops it
    with SIGTERM and checks it exits 0."""
    port = free_port()
    args = [sys.executable, "-m", "ember", "serve", "--port", str(port), "--home", str(home)]
    if models_dir is not None:
        args += ["--models-dir", str(models_dir), "--offline"]
    base_url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_until_healthy(base_url, process, log)
            yield base_url, models_dir or home / "models"
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
            if code != 0:
                raise RuntimeError(f"ember serve exited {code} after SIGTERM; see {log}")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def wait_until_healthy(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 600  # a first start downloads the model
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ember serve exited: {log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"ember serve did not become healthy; see {log}")


def build_references(base_url: str, models_dir: Path, texts: list[str]) -> ReferencePool:
    """Each text embedded alone (one request at a time), and its token ids for array inputs."""
    tokenizer = Tokenizer.from_file(str(models_dir / MODEL / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    vectors = []
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for text in texts:
            response = client.post("/v1/embeddings", json={"model": MODEL, "input": text})
            response.raise_for_status()
            vectors.append(np.asarray(response.json()["data"][0]["embedding"], dtype=np.float32))
    token_ids = [encoding.ids for encoding in tokenizer.encode_batch(texts)]
    return ReferencePool(texts, token_ids, vectors)


def random_request(
    rng: random.Random, pool: ReferencePool, max_batch: int
) -> tuple[str, dict[str, Any], list[int]]:
    """A request of a random shape: its kind, its body, and the pool index of each input."""
    encoding = rng.choice(["float", "base64"])
    shape = rng.choices(["string", "batch", "token-array", "token-arrays"], [3, 4, 1, 2])[0]
    if shape in ("string", "token-array"):
        chosen = [rng.randrange(len(pool.texts))]
    else:
        chosen = [rng.randrange(len(pool.texts)) for _ in range(rng.randint(1, max_batch))]
    value: Any
    if shape == "string":
        value = pool.texts[chosen[0]]
    elif shape == "batch":
        value = [pool.texts[index] for index in chosen]
    elif shape == "token-array":
        value = pool.token_ids[chosen[0]]
    else:
        value = [pool.token_ids[index] for index in chosen]
    body = {"model": MODEL, "input": value, "encoding_format": encoding}
    return f"{shape}/{encoding}", body, chosen


def decoded(item: dict[str, Any]) -> Vector:
    embedding = item["embedding"]
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
    return np.asarray(embedding, dtype=np.float32)


def check(report: LoadReport, pool: ReferencePool, body: dict[str, Any], chosen: list[int]) -> None:
    data = body["data"]
    if [item["index"] for item in data] != list(range(len(chosen))):
        report.mismatches.append(f"{len(data)} vectors for {len(chosen)} inputs")
        return
    for position, (item, index) in enumerate(zip(data, chosen, strict=True)):
        difference = float(np.max(np.abs(decoded(item) - pool.vectors[index])))
        report.vectors_checked += 1
        report.largest_difference = max(report.largest_difference, difference)
        if difference > TOLERANCE:
            report.mismatches.append(
                f"input {position} (pool text {index}) differs by {difference:.3g}"
            )


async def run_load(
    base_url: str,
    pool: ReferencePool,
    *,
    duration: float,
    clients: int,
    max_batch: int = 32,
    seed: int = 0,
) -> LoadReport:
    """`clients` concurrent clients sending random requests until `duration` seconds pass."""
    report = LoadReport()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    started = time.monotonic()
    deadline = started + duration

    async def client(number: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(seed * 1000 + number)
        while time.monotonic() < deadline:
            kind, body, chosen = random_request(rng, pool, max_batch)
            sent = time.monotonic()
            try:
                response = await http.post("/v1/embeddings", json=body)
            except httpx.HTTPError as exc:
                report.statuses[type(exc).__name__] += 1
                continue
            report.latencies.append(time.monotonic() - sent)
            report.statuses[str(response.status_code)] += 1
            report.kinds[kind] += 1
            if response.status_code == 200:
                report.inputs += len(chosen)
                check(report, pool, response.json(), chosen)

    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as http:
        await asyncio.gather(*(client(number, http) for number in range(clients)))
    report.seconds = time.monotonic() - started
    return report


def batch_summary(base_url: str) -> str:
    """How the server batched: engine calls and sequences per call, from /metrics."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("ember_batch_sequences_")
    }
    count = values.get("ember_batch_sequences_count", 0.0)
    total = values.get("ember_batch_sequences_sum", 0.0)
    mean = total / count if count else 0.0
    return f"engine batches: {count:.0f}, {mean:.1f} sequences per batch on average"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0, help="Seconds of load.")
    parser.add_argument("--clients", type=int, default=64, help="Concurrent clients.")
    parser.add_argument("--texts", type=int, default=256, help="Distinct texts in the pool.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of texts and request mix.")
    parser.add_argument(
        "--home",
        type=Path,
        default=Path.home() / ".cache" / "ember-bench" / "home",
        help="Ember home for the server; the default model is pulled here on a first run.",
    )
    parser.add_argument(
        "--models-dir", type=Path, help="Serve this models folder (offline) instead."
    )
    args = parser.parse_args(argv)
    args.home.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.mkstemp(prefix="ember-load-", suffix=".log")[1])
    with serving(args.home, args.models_dir, log) as (base_url, models_dir):
        print(f"ember serve at {base_url} (log: {log}); {os.cpu_count()} CPUs")
        texts = make_texts(vocabulary_words(models_dir), args.texts, args.seed)
        pool = build_references(base_url, models_dir, texts)
        print(f"references: {len(texts)} texts, each embedded alone")
        print(f"load: {args.clients} clients for {args.duration:.0f} s ...", flush=True)
        report = asyncio.run(
            run_load(base_url, pool, duration=args.duration, clients=args.clients, seed=args.seed)
        )
        for line in report.lines():
            print(line)
        print(batch_summary(base_url))
        for mismatch in report.mismatches[:10]:
            print(f"  wrong vector: {mismatch}")
    print("server stopped with SIGTERM: exit code 0")
    failed = report.server_errors or report.transport_errors or report.mismatches
    return 1 if failed or not report.served else 0


if __name__ == "__main__":
    sys.exit(main())
