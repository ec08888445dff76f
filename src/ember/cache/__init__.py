"""An optional content-addressed cache of embeddings: in memory (LRU) and on disk (SQLite)."""

from __future__ import annotations

from ember.cache.embedding_cache import EmbeddingCache, model_fingerprint

__all__ = ["EmbeddingCache", "model_fingerprint"]
