"""llama.cpp engine for GGUF embedding models (Jan's and llama.cpp's format), an optional extra."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ember.errors import RuntimeMissing
from ember.pooling import Pooling

if TYPE_CHECKING:
    from ember.engines.base import Engine
    from ember.models.tokenizer import ModelTokenizer

INSTALL_HINT = "pip install 'ember-embeddings[gguf]'"


def load_gguf(
    model_path: Path,
    *,
    max_tokens: int,
    pooling: Pooling,
    normalize_output: bool,
    gpu_layers: int = 0,
) -> tuple[ModelTokenizer, Engine]:
    """Open a GGUF model with llama.cpp; raises RuntimeMissing when the extra is absent."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        raise RuntimeMissing(
            f"GGUF models run on llama.cpp, which is not installed: {INSTALL_HINT}"
        ) from exc
    raise NotImplementedError
