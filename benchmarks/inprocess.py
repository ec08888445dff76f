"""Ember's ONNX engine called directly in this process: the floor the HTTP server adds to.

Batches are formed by the server's own pending pool (texts sorted by length, each engine call
within the model's token budget, ubatch_size, the work split evenly over idle lanes); several
run on the engine's lanes at once, a lone one `alone` on every core, as the scheduler runs them.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from systems import Burst, Memory, Vector
from workloads import Workload

from ember.engines.base import TokenBatch, TokenIds, embed_on_lanes
from ember.engines.onnx import OnnxEngine
from ember.models.settings import read_settings
from ember.models.tokenizer import TextTokenizer
from ember.scheduler.batching import EmbeddingJob, PendingPool


class EngineSystem:
    """OnnxEngine plus TextTokenizer on one model folder; tokenising is not timed."""

    def __init__(self, model_folder: Path, name: str = "Ember engine") -> None:
        self.name = name
        settings = read_settings(model_folder)
        self._budget = settings.ubatch_size
        self._tokenizer = TextTokenizer(model_folder / "tokenizer.json", settings.ctx_len)
        self._engine = OnnxEngine(
            model_folder / settings.model_file,
            pooling=settings.pooling,
            normalize_output=settings.normalize,
        )
        self._tokens: dict[str, list[TokenIds]] = {}

    def _ids(self, workload: Workload) -> list[TokenIds]:
        if workload.name not in self._tokens:
            self._tokens[workload.name] = self._tokenizer.encode(list(workload.texts))
        return self._tokens[workload.name]

    def _plan(self, sequences: list[TokenIds]) -> list[TokenBatch]:
        """The batches the scheduler's pending pool makes of one request that finds every
        lane idle: the first spread over all lanes, each further one over the lanes still
        idle, then one lane at a time (each lane takes the next when it is free)."""
        loop = asyncio.new_event_loop()
        try:
            pool = PendingPool(self._budget)
            pool.add(EmbeddingJob(sequences, loop.create_future()))
            batches: list[TokenBatch] = []
            idle = self._engine.lanes
            while pool:
                batch = pool.next_batch(share=idle)
                batches.append(TokenBatch([sequences[item.index] for item in batch]))
                idle = max(1, idle - 1)
            return batches
        finally:
            loop.close()

    def batch(self, workload: Workload) -> float:
        plan = self._plan(self._ids(workload))
        started = time.perf_counter()
        list(embed_on_lanes(self._engine, plan))
        return time.perf_counter() - started

    def queries(self, workload: Workload, count: int) -> list[float]:
        token_batch = TokenBatch(self._ids(workload))
        latencies = []
        for _ in range(count):
            started = time.perf_counter()
            self._engine.embed(token_batch, alone=True)
            latencies.append(time.perf_counter() - started)
        return latencies

    def concurrent(self, workload: Workload) -> Burst | None:
        return None

    def first_vector(self, workload: Workload) -> Vector:
        vectors = self._engine.embed(TokenBatch(self._ids(workload)[:1]), alone=True)
        return np.asarray(vectors[0], dtype=np.float32)

    def memory(self) -> Memory | None:
        return None  # shares this process with the benchmark itself

    def close(self) -> None:
        self._engine.close()
