"""Comparing served vectors with reference ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def cosines(vectors: Any, expected: Any) -> npt.NDArray[np.float64]:
    """Row-wise cosine similarity of two [n, dims] arrays, in float64."""
    got = np.asarray(vectors, dtype=np.float64)
    want = np.asarray(expected, dtype=np.float64)
    dots = (got * want).sum(axis=1)
    return np.asarray(dots / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)))
