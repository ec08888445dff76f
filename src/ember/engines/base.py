"""The engine contract: embed a batch of token ids, say your limits, close; and what serving
needs of a tokenizer, which engines that tokenise themselves (GGUF) provide."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
TokenIds = npt.NDArray[np.int64]


@dataclass(frozen=True)
class TokenBatch:
    """Token id sequences of one engine call, ragged; engines pad as they need."""

    sequences: Sequence[TokenIds]

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def longest(self) -> int:
        return max((len(sequence) for sequence in self.sequences), default=0)

    @property
    def padded_tokens(self) -> int:
        """Tokens the engine computes once the batch is padded to its longest sequence."""
        return self.longest * len(self.sequences)

    def padded(self, pad_id: int = 0) -> tuple[TokenIds, TokenIds]:
        """Right-padded `(input_ids, attention_mask)`, both int64 [batch, longest]."""
        if len(self.sequences) == 1:  # a lone query: nothing to pad, no copy to make
            ids = np.asarray(self.sequences[0], dtype=np.int64)[np.newaxis, :]
            return ids, np.ones_like(ids)
        input_ids = np.full((len(self.sequences), self.longest), pad_id, dtype=np.int64)
        attention_mask = np.zeros_like(input_ids)
        for row, sequence in enumerate(self.sequences):
            input_ids[row, : len(sequence)] = sequence
            attention_mask[row, : len(sequence)] = 1
        return input_ids, attention_mask


class Engine(Protocol):
    """A loaded model that turns token ids into sentence vectors.

    `embed` returns one float32 row per sequence, pooled and normalised as the model's
    settings say. It blocks; up to `lanes` calls run at once, each on its own thread. A call
    made `alone` has the machine to itself: no other call runs until it returns, so an engine
    whose lanes split the cores may give it every core (a lone query's latency).
    """

    @property
    def dimensions(self) -> int: ...

    @property
    def lanes(self) -> int:
        """How many `embed` calls may run at once; 1 for engines that are not thread-safe."""
        ...

    @property
    def runtime(self) -> str:
        """What computes the vectors (onnxruntime, openvino, llama.cpp), for /v1/models."""
        ...

    def embed(self, batch: TokenBatch, *, alone: bool = False) -> Vectors: ...

    def close(self) -> None: ...


class ModelTokenizer(Protocol):
    """What serving needs of a tokenizer; engines that tokenise themselves (GGUF) provide one."""

    max_tokens: int
    vocab_size: int

    def encode(self, texts: Sequence[str]) -> list[TokenIds]: ...

    def wrap(self, ids: Sequence[int]) -> TokenIds: ...

    def is_wrapped(self, ids: Sequence[int]) -> bool: ...

    def truncate_ids(self, ids: TokenIds) -> TokenIds: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def checked_rows(vectors: Vectors, expected: int, width: int | None = None) -> Vectors:
    """An engine's answer, refused (ValueError) unless one row per sequence (and `width`
    columns, when given): a short answer would leave inputs without vectors, and a single
    row would broadcast over a whole batch's places unnoticed."""
    if vectors.ndim != 2 or len(vectors) != expected or width not in (None, vectors.shape[1]):
        raise ValueError(f"the engine answered {expected} inputs with shape {vectors.shape}")
    return vectors


def embed_on_lanes(engine: Engine, batches: Sequence[TokenBatch]) -> Iterator[Vectors]:
    """Each batch's vectors, in order, for a caller holding all its batches at once: several
    on the engine's lanes side by side, a lone one `alone` on every core, as the server's
    scheduler runs them."""
    if engine.lanes == 1 or len(batches) == 1:
        yield from (engine.embed(batch, alone=True) for batch in batches)
        return
    with ThreadPoolExecutor(engine.lanes) as lanes:
        yield from lanes.map(engine.embed, batches)
