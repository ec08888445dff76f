"""Response bodies built straight from float32 buffers: orjson for floats, base64 for bytes."""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
import orjson

from ember.engines.base import Vectors


def embeddings_body(
    vectors: Vectors,
    model: str,
    prompt_tokens: int,
    encoding_format: Literal["float", "base64"],
) -> bytes:
    """The JSON of an OpenAI embeddings list, in the order the reference shows."""
    if encoding_format == "base64":
        little_endian = np.ascontiguousarray(vectors, dtype="<f4")
        encoded: list[object] = [base64.b64encode(row.tobytes()).decode() for row in little_endian]
    else:
        encoded = list(np.ascontiguousarray(vectors, dtype=np.float32))
    body = {
        "object": "list",
        "model": model,
        "data": [
            {"object": "embedding", "embedding": embedding, "index": index}
            for index, embedding in enumerate(encoded)
        ],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
