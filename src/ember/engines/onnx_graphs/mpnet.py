"""MPNet encoders as ONNX graphs: BERT's layers plus a relative position bias shared by all."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto

from ember.engines.onnx_graphs.bert import (
    MASK_FILTER_VALUE,
    OUTPUT_NAME,
    QKV_NAMES,
    BertConfig,
    EncoderBuilder,
    Pooling,
)
from ember.engines.onnx_graphs.builder import (
    MICROSOFT_DOMAIN,
    GraphBuilder,
    WeightSource,
    l2_normalize,
    pool_tokens,
)

# Hugging Face's MPNetEmbeddings fixes padding_idx at 1 whatever the config says: real tokens
# take positions 2, 3, ... and the rows below are never used by them.
PADDING_IDX = 1
# HF's compute_position_bias calls relative_position_bucket with its defaults, never the config's.
RELATIVE_BUCKETS = 32
RELATIVE_MAX_DISTANCE = 128

# MPNet's tensor names -> the BERT names EncoderBuilder reads; all other names are shared.
_BERT_NAMES = (
    (".attention.attn.q.", ".attention.self.query."),
    (".attention.attn.k.", ".attention.self.key."),
    (".attention.attn.v.", ".attention.self.value."),
    (".attention.attn.o.", ".attention.output.dense."),
    (".attention.LayerNorm.", ".attention.output.LayerNorm."),
)


@dataclass(frozen=True)
class MPNetConfig:
    """A Hugging Face `MPNetConfig`: BERT's shape plus the relative-attention table."""

    encoder: BertConfig
    relative_buckets: int

    @property
    def max_tokens(self) -> int:
        """The longest input the position table covers (positions start after PADDING_IDX)."""
        return self.encoder.max_positions - PADDING_IDX - 1

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> MPNetConfig:
        """Read a parsed config.json; ValueError names a missing or unsupported field."""
        buckets = config.get("relative_attention_num_buckets", RELATIVE_BUCKETS)
        if not isinstance(buckets, int) or buckets < RELATIVE_BUCKETS:
            raise ValueError(
                f"relative_attention_num_buckets must be an integer >= {RELATIVE_BUCKETS} "
                f"(Hugging Face always indexes {RELATIVE_BUCKETS} buckets), got {buckets!r}"
            )
        parsed = cls(encoder=BertConfig.from_mapping(config), relative_buckets=buckets)
        if parsed.max_tokens <= 0:
            raise ValueError(f"max_position_embeddings must exceed {PADDING_IDX + 1}")
        return parsed


def relative_position_buckets(length: int) -> npt.NDArray[np.int32]:
    """[length, length] bucket of key position minus query position, as MPNet computes it.

    Hugging Face's relative_position_bucket (bidirectional, T5-style): keys after the query
    use the upper half of the buckets; distances under 8 get a bucket each, longer ones share
    log-spaced buckets up to 128. Float32 arithmetic, as torch does it, so no bucket edge moves.
    """
    positions = np.arange(length, dtype=np.int64)
    distance = positions[:, None] - positions[None, :]  # query - key
    half = RELATIVE_BUCKETS // 2
    exact = half // 2
    buckets = np.where(distance < 0, half, 0)
    distance = np.abs(distance)
    ratio = np.maximum(distance, 1).astype(np.float32) / np.float32(exact)
    scale = np.float32(math.log(RELATIVE_MAX_DISTANCE / exact))
    spread = np.log(ratio) / scale * np.float32(half - exact)
    large = np.minimum(exact + spread.astype(np.int64), half - 1)
    table = buckets + np.where(distance < exact, distance, large)
    return np.asarray(table, dtype=np.int32)


def build_mpnet_graph(
    config: Mapping[str, Any],
    weights: Mapping[str, npt.NDArray[Any]],
    *,
    pooling: Pooling,
    normalize: bool,
    fused: bool = True,
) -> onnx.ModelProto:
    """The sentence-embedding graph of an MPNet checkpoint (e.g. all-mpnet-base-v2).

    Same contract as `build_bert_graph`: int64 `input_ids` and `attention_mask` [batch,
    sequence] in, float32 `sentence_embedding` [batch, hidden] out. Position ids come from
    the attention mask, not from comparing ids with <pad> as Hugging Face does, so the
    graph gives the same vectors whatever id the engine pads with.
    """
    parsed = MPNetConfig.from_mapping(config)
    source = WeightSource(_with_bert_names(weights), prefixes=("", "mpnet."))
    builder = GraphBuilder("mpnet_sentence_embedding")
    input_ids = builder.add_input("input_ids", TensorProto.INT64, ["batch", "sequence"])
    mask = builder.add_input("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    layers = _MPNetEncoderBuilder(builder, source, parsed, fused=fused)
    hidden = layers.mpnet_embeddings(input_ids, mask)
    attention_mask = layers.attention_mask(mask)
    for index in range(parsed.encoder.num_layers):
        hidden = layers.layer(index, hidden, attention_mask)
    pooled = pool_tokens(builder, hidden, mask, pooling)
    if normalize:
        pooled = l2_normalize(builder, pooled)
    builder.op("Identity", pooled, output=OUTPUT_NAME)
    builder.add_output(OUTPUT_NAME, TensorProto.FLOAT, ["batch", parsed.encoder.hidden_size])
    return builder.build(normalized=normalize)


def _with_bert_names(weights: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
    renamed = {}
    for name, tensor in weights.items():
        for mpnet_part, bert_part in _BERT_NAMES:
            name = name.replace(mpnet_part, bert_part)
        renamed[name] = tensor
    return renamed


class _MPNetEncoderBuilder(EncoderBuilder):
    """BERT's encoder builder, with MPNet's embeddings and the relative bias in attention."""

    def __init__(
        self, builder: GraphBuilder, source: WeightSource, config: MPNetConfig, *, fused: bool
    ) -> None:
        super().__init__(builder, source, config.encoder, fused=fused)
        self._mpnet = config
        self._position_bias = ""

    def mpnet_embeddings(self, input_ids: str, mask: str) -> str:
        """LayerNorm(word[id] + position[cumsum(mask) * mask + PADDING_IDX]); no token types."""
        config, builder = self._config, self._builder
        hidden = config.hidden_size
        words = self._source.get("embeddings.word_embeddings.weight", (config.vocab_size, hidden))
        positions = self._source.get(
            "embeddings.position_embeddings.weight", (config.max_positions, hidden)
        )
        counted = builder.op("CumSum", mask, builder.int64_scalar("axis_1", 1))
        position_ids = builder.op(
            "Add",
            builder.op("Mul", counted, mask),
            builder.int64_scalar("padding_idx", PADDING_IDX),
        )
        summed = builder.op(
            "Add",
            builder.op("Gather", builder.initializer("word_embeddings", words), input_ids),
            builder.op(
                "Gather", builder.initializer("position_embeddings", positions), position_ids
            ),
        )
        return self._layer_norm(summed, "embeddings.LayerNorm")

    def attention_mask(self, mask: str) -> str:
        """The mask as attention consumes it; the relative position bias joins it in one
        additive term, or, fused, waits for each Attention node's own bias input."""
        self._position_bias = self._relative_position_bias(mask)
        padding = super().attention_mask(mask)
        if self._fused:
            return padding
        # [batch, 1, 1, seq] + [1, heads, seq, seq]: one additive term for every layer's scores.
        return self._builder.op("Add", padding, self._position_bias)

    def _relative_position_bias(self, mask: str) -> str:
        """[1, heads, seq, seq]: a bucket table sliced to the sequence, gathered per head."""
        builder, heads = self._builder, self._config.num_heads
        table = builder.initializer(
            "relative_position_buckets", relative_position_buckets(self._mpnet.max_tokens)
        )
        sequence = builder.op(
            "Slice",
            builder.op("Shape", mask),
            builder.int64s("one", [1]),
            builder.int64s("two", [2]),
        )
        buckets = builder.op(
            "Slice",
            table,
            builder.int64s("zeros_2", [0, 0]),
            builder.op("Concat", sequence, sequence, axis=0),
            builder.int64s("axes_0_1", [0, 1]),
        )
        weight = self._source.get(
            "encoder.relative_attention_bias.weight", (self._mpnet.relative_buckets, heads)
        )
        per_head = builder.initializer("relative_attention_bias", np.ascontiguousarray(weight.T))
        bias = builder.op("Gather", per_head, buckets, axis=1)
        return builder.op("Unsqueeze", bias, builder.int64s("axis_0", [0]))

    def _self_attention(self, prefix: str, hidden: str, attention_mask: str) -> str:
        if not self._fused:
            return super()._self_attention(prefix, hidden, attention_mask)
        config, builder = self._config, self._builder
        size = config.hidden_size
        weights = [self._source.get(f"{prefix}{part}.weight", (size, size)) for part in QKV_NAMES]
        biases = [self._source.get(f"{prefix}{part}.bias", (size,)) for part in QKV_NAMES]
        return builder.op(
            "Attention",
            hidden,
            builder.initializer(
                prefix + "qkv.weight", np.concatenate([weight.T for weight in weights], axis=1)
            ),
            builder.initializer(prefix + "qkv.bias", np.concatenate(biases)),
            attention_mask,
            "",  # no past state
            self._position_bias,  # attention_bias: added to the scaled scores of every head
            domain=MICROSOFT_DOMAIN,
            num_heads=config.num_heads,
            mask_filter_value=MASK_FILTER_VALUE,
        )
