"""Pooling and normalisation in numpy, for engines that return token states."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Pooling = Literal["mean", "cls", "lasttoken"]
# ONNX metadata on graphs whose output rows are unit vectors already (Ember's own), which
# GraphOutputFinish then leaves as they are.
NORMALIZED_METADATA = "ember.normalized_in_graph"
Vectors = npt.NDArray[np.float32]


def pool(
    token_states: npt.NDArray[np.float32],
    attention_mask: npt.NDArray[np.int64],
    pooling: Pooling,
) -> Vectors:
    """Pool [batch, seq, hidden] states to [batch, hidden] as sentence-transformers does."""
    if pooling == "cls":
        first: Vectors = np.ascontiguousarray(token_states[:, 0, :], dtype=np.float32)
        return first
    if pooling == "lasttoken":
        last = attention_mask.sum(axis=1) - 1
        final: Vectors = np.ascontiguousarray(
            token_states[np.arange(len(last)), last, :], dtype=np.float32
        )
        return final
    weights = attention_mask[:, :, None].astype(np.float32)
    summed = (token_states * weights).sum(axis=1)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    mean: Vectors = (summed / counts).astype(np.float32)
    return mean


def normalize(vectors: Vectors) -> Vectors:
    """L2-normalise rows, leaving all-zero rows as they are (sentence-transformers' epsilon)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: Vectors = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


def shorten(vectors: Vectors, dimensions: int, *, layer_norm: bool = False) -> Vectors:
    """Matryoshka truncation: keep the first `dimensions` values, then re-normalise.

    `layer_norm` first centres and scales each full vector, as nomic-embed-text v1.5's recipe
    does (F.layer_norm before slicing); it is scale-invariant, so it applies to unit vectors.
    """
    if layer_norm:
        centred = vectors - vectors.mean(axis=1, keepdims=True)
        vectors = (centred / np.sqrt(centred.var(axis=1, keepdims=True) + 1e-5)).astype(np.float32)
    return normalize(np.ascontiguousarray(vectors[:, :dimensions]))


@dataclass(frozen=True)
class GraphOutputFinish:
    """Turns an ONNX graph's output into sentence vectors: pooled here if the graph gave token
    states, and normalised if the model's settings say so, unless the graph says it already
    did (`normalized_in_graph`, which Ember's graphs say: normalising again cost time for
    nothing)."""

    pooled_in_graph: bool
    pooling: Pooling
    normalize_output: bool
    normalized_in_graph: bool = False

    def __call__(
        self, output: npt.NDArray[np.float32], attention_mask: npt.NDArray[np.int64]
    ) -> Vectors:
        vectors = np.asarray(output, dtype=np.float32)
        if not self.pooled_in_graph and vectors.ndim == 3:
            vectors = pool(vectors, attention_mask, self.pooling)
        elif self.normalized_in_graph:
            return vectors
        return normalize(vectors) if self.normalize_output else vectors
