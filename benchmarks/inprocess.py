"""Ember's ONNX engine called directly in this process: the floor the HTTP server adds to.

A batch workload goes through the server's own scheduler (a ModelWorker on the engine's
lanes, without HTTP), so its batches are formed and run exactly as the server's are: sorted
by length, within the model's token budget, spread over the lanes with the tail split by
how far busy lanes have got. A query calls the engine alone, on every core.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from systems import Burst, Memory, Vector
from workloads import Workload

from ember.engines.base import Engine, TokenBatch, TokenIds
from ember.engines.onnx import OnnxEngine
from ember.models.settings import read_settings
from ember.models.tokenizer import TextTokenizer
from ember.scheduler.worker import ModelWorker


class EngineSystem:
    """OnnxEngine plus TextTokenizer on one model folder, batches through a ModelWorker;
    tokenising is not timed."""

    def __init__(self, model_folder: Path, name: str = "Ember engine") -> None:
        self.name = name
        settings = read_settings(model_folder)
        self._tokenizer = TextTokenizer(model_folder / "tokenizer.json", settings.ctx_len)
        self._engine = OnnxEngine(
            model_folder / settings.model_file,
            pooling=settings.pooling,
            normalize_output=settings.normalize,
        )
        self._tokens: dict[str, list[TokenIds]] = {}
        self._loop = asyncio.new_event_loop()
        self._worker = ModelWorker(
            name,
            self._engine_source,
            token_budget=settings.ubatch_size,
            max_queued_items=1_000_000,
        )

    async def _engine_source(self, _reload: bool) -> Engine:
        return self._engine

    def _ids(self, workload: Workload) -> list[TokenIds]:
        if workload.name not in self._tokens:
            self._tokens[workload.name] = self._tokenizer.encode(list(workload.texts))
        return self._tokens[workload.name]

    def batch(self, workload: Workload) -> float:
        sequences = self._ids(workload)
        started = time.perf_counter()
        self._loop.run_until_complete(self._worker.embed(sequences))
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
        self._loop.run_until_complete(self._worker.close())
        self._loop.close()
        self._engine.close()
