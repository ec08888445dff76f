"""A deterministic engine without a model, for tests of everything around the engine."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ember.engines.base import TokenBatch, Vectors
from ember.errors import EmbeddingUnsupported


class FakeEngine:
    """Vectors derived from a hash of the token ids: equal ids, equal vectors.

    Faults are injected through options (model.json's `fake` mapping): `delay_seconds` per
    batch, `fail_token` (a token id whose presence makes the batch raise), and
    `embedding_mode: false` (the instance cannot embed, like a model loaded for chat);
    `lanes` says how many calls the scheduler may run at once (default 1).
    """

    def __init__(self, dimensions: int, options: Mapping[str, Any]) -> None:
        self._dimensions = dimensions
        self._delay = float(options.get("delay_seconds", 0.0))
        fail_token = options.get("fail_token")
        self._fail_token = None if fail_token is None else int(fail_token)
        self._embedding_mode = bool(options.get("embedding_mode", True))
        self._lanes = int(options.get("lanes", 1))

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def runtime(self) -> str:
        return "fake"

    def embed(self, batch: TokenBatch, *, alone: bool = False) -> Vectors:
        if not self._embedding_mode:
            raise EmbeddingUnsupported("model instance was loaded without embeddings")
        if self._delay:
            time.sleep(self._delay)
        if self._fail_token is not None and any(
            self._fail_token in sequence for sequence in batch.sequences
        ):
            raise RuntimeError("injected engine fault")
        return np.stack([self._vector(sequence.tobytes()) for sequence in batch.sequences])

    def close(self) -> None:
        """Nothing to release."""

    def _vector(self, key: bytes) -> Vectors:
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(self._dimensions).astype(np.float32)
        return (vector / np.linalg.norm(vector)).astype(np.float32)
