"""ONNX graphs that Ember builds itself from Hugging Face weights, one module per architecture."""

from __future__ import annotations

from ember.engines.onnx_graphs.bert import build_bert_graph
from ember.engines.onnx_graphs.builder import (
    GraphBuilder,
    WeightSource,
    l2_normalize,
    map_row_chunks,
    pool_tokens,
)

__all__ = [
    "GraphBuilder",
    "WeightSource",
    "build_bert_graph",
    "l2_normalize",
    "map_row_chunks",
    "pool_tokens",
]
