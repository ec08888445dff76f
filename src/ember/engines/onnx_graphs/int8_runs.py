"""Runs an encoder graph on token ids, for calibration and fidelity: padded batches, a plain
session, and the cosine of two graphs' vectors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

# One text's token ids, special tokens included: a list, or an array as Ember's tokenizer gives.
TokenIds = Sequence[int] | npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.int64]
Batch = tuple[IndexArray, IndexArray]


@dataclass(frozen=True)
class Fidelity:
    """Cosine similarity of one graph's vectors to a reference graph's over the same texts."""

    min_cosine: float
    mean_cosine: float
    texts: int


def padded_batches(token_ids: Sequence[TokenIds], size: int = 16) -> Iterator[Batch]:
    """Right-padded batches in the given order. Pad id 0 is safe: pad tokens are masked out of
    attention and pooling, and each token is quantised on its own scale."""
    for start in range(0, len(token_ids), size):
        chunk = token_ids[start : start + size]
        width = max(1, *(len(ids) for ids in chunk))
        ids = np.zeros((len(chunk), width), dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        for row, sequence in enumerate(chunk):
            ids[row, : len(sequence)] = sequence
            mask[row, : len(sequence)] = 1
        yield ids, mask


def session_for(model: onnx.ModelProto, *, optimize: bool = True) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )


def feeds_for(session: Any, ids: IndexArray, mask: IndexArray) -> dict[str, Any]:
    known = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {i.name: known[i.name] for i in session.get_inputs() if i.name in known}


def vectors_of(
    session: Any, batches: Sequence[Batch], extra: dict[str, Any] | None = None
) -> FloatArray:
    output = session.get_outputs()[0].name
    parts: list[FloatArray] = []
    for ids, mask in batches:
        feeds = {**feeds_for(session, ids, mask), **(extra or {})}
        parts.append(np.asarray(session.run([output], feeds)[0], dtype=np.float32))
    return np.concatenate(parts)


def compare(reference: FloatArray, candidate: FloatArray) -> Fidelity:
    def unit(vectors: FloatArray) -> FloatArray:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)

    cosines = (unit(reference) * unit(candidate)).sum(axis=1)
    return Fidelity(float(cosines.min()), float(cosines.mean()), int(cosines.size))
