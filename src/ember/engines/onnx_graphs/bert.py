"""BERT-family encoders as ONNX graphs, built from a Hugging Face config and safetensors."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto

from ember.engines.onnx_graphs.builder import (
    MICROSOFT_DOMAIN,
    FloatArray,
    GraphBuilder,
    WeightSource,
    l2_normalize,
    map_row_chunks,
    pool_tokens,
)
from ember.pooling import Pooling

__all__ = [
    "DEFAULT_CHUNK_TOKENS",
    "INT8_BUILD_OPTIONS",
    "OUTPUT_NAME",
    "BertConfig",
    "Pooling",
    "build_bert_graph",
]

OUTPUT_NAME = "sentence_embedding"
# Row blocks of about this many tokens ran fastest on a 2-core AVX-512 CPU (see map_row_chunks).
DEFAULT_CHUNK_TOKENS = 1024

Activation = Literal["gelu", "gelu_tanh", "relu"]
# Hugging Face's names for the activations; the tanh forms are one formula under three names.
_ACTIVATIONS: dict[str, Activation] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
# Added to the scores of padded keys; exp() of it underflows to exactly 0 in float32.
MASK_FILTER_VALUE = -10000.0
QKV_NAMES = ("query", "key", "value")
# [batch, seq, heads, head] -> [batch, heads, seq, head], and back: the permutation is its inverse.
_HEADS_FIRST = (0, 2, 1, 3)
# [batch, seq, heads, head] -> [batch, heads, head, seq]: K already transposed for Q @ K^T.
_HEADS_FIRST_KEYS_T = (0, 2, 3, 1)
# How the graph that `quantize_int8` starts from is built: standard attention, whose Q, K and V
# products it can quantise, with K's and V's biases where the checkpoint has them, which
# calibrated better than the folded form (see EncoderBuilder).
INT8_BUILD_OPTIONS = {"fused_attention": False, "fold_attention_biases": False}


@dataclass(frozen=True)
class BertConfig:
    """The parts of a Hugging Face `BertConfig` that shape the graph."""

    hidden_size: int
    num_heads: int
    num_layers: int
    intermediate_size: int
    activation: Activation
    layer_norm_eps: float
    vocab_size: int
    max_positions: int
    type_vocab_size: int

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> BertConfig:
        """Read a parsed config.json; ValueError names a missing or unsupported field."""
        hidden_act = config.get("hidden_act", "gelu")
        if hidden_act not in _ACTIVATIONS:
            supported = ", ".join(sorted(_ACTIVATIONS))
            raise ValueError(f"unsupported hidden_act {hidden_act!r} (supported: {supported})")
        position_type = config.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"unsupported position_embedding_type {position_type!r}")
        parsed = cls(
            hidden_size=_positive_int(config, "hidden_size"),
            num_heads=_positive_int(config, "num_attention_heads"),
            num_layers=_positive_int(config, "num_hidden_layers"),
            intermediate_size=_positive_int(config, "intermediate_size"),
            activation=_ACTIVATIONS[hidden_act],
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            vocab_size=_positive_int(config, "vocab_size"),
            max_positions=_positive_int(config, "max_position_embeddings"),
            type_vocab_size=_positive_int({"type_vocab_size": 2, **config}, "type_vocab_size"),
        )
        if parsed.hidden_size % parsed.num_heads:
            raise ValueError(
                f"hidden_size {parsed.hidden_size} is not a multiple of "
                f"num_attention_heads {parsed.num_heads}"
            )
        return parsed


def _positive_int(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"config field {key!r} must be a positive integer, got {value!r}")
    return value


def build_bert_graph(
    config: Mapping[str, Any],
    weights: Mapping[str, npt.NDArray[Any]],
    *,
    pooling: Pooling,
    normalize: bool,
    chunk_tokens: int | None = DEFAULT_CHUNK_TOKENS,
    fused: bool = False,
    fused_attention: bool = True,
    fold_attention_biases: bool = True,
) -> onnx.ModelProto:
    """The sentence-embedding graph of a BERT checkpoint (BertModel + sentence-transformers head).

    Inputs `input_ids` and `attention_mask`, int64 [batch, sequence]; output
    `sentence_embedding`, float32 [batch, hidden], pooled as sentence-transformers pools and
    L2-normalised if `normalize`. Token types are always 0, so that row is folded into the
    position table. The batch runs in row blocks of about `chunk_tokens` tokens (None: all at
    once), which keeps large batches cache-resident (see `map_row_chunks`).

    Attention is ONNX Runtime's com.microsoft Attention operator (`fused_attention`): one
    packed Q/K/V product, softmax and head shuffles in one kernel. The same vectors as the
    standard operators; on MiniLM (2 cores, paired runs) a 10-token query took 1.33 ms instead
    of 1.51, batches of 16-token texts ran 1.05x, of 64 1.03x, of 128 and 250 1.00-1.01x, of
    32 0.99x. Everything else is standard opset 17; ONNX Runtime fuses its GELU into BiasGelu
    itself. `fused=True` also emits SkipLayerNormalization, which measured 6% slower.
    `fold_attention_biases` (standard attention only) drops K's bias and moves V's into the
    attention output's (see EncoderBuilder): the same vectors, two passes fewer per layer.
    Raises ValueError for an unsupported config or a missing or mis-shaped tensor.
    """
    parsed = BertConfig.from_mapping(config)
    source = WeightSource(weights, prefixes=("", "bert."))
    builder = GraphBuilder("bert_sentence_embedding")
    input_ids = builder.add_input("input_ids", TensorProto.INT64, ["batch", "sequence"])
    mask = builder.add_input("attention_mask", TensorProto.INT64, ["batch", "sequence"])

    def sentence_vectors(graph: GraphBuilder, ids: str, ids_mask: str) -> str:
        encoder = EncoderBuilder(
            graph,
            source,
            parsed,
            fused=fused,
            fused_attention=fused_attention,
            fold_attention_biases=fold_attention_biases,
        )
        hidden = encoder.embeddings(ids)
        attention_mask = encoder.attention_mask(ids_mask)
        for index in range(parsed.num_layers):
            hidden = encoder.layer(index, hidden, attention_mask)
        pooled = pool_tokens(graph, hidden, ids_mask, pooling)
        return l2_normalize(graph, pooled) if normalize else pooled

    if chunk_tokens is None:
        vectors = sentence_vectors(builder, input_ids, mask)
    else:
        vectors = map_row_chunks(
            builder,
            [input_ids, mask],
            chunk_tokens=chunk_tokens,
            body=lambda graph, sliced: sentence_vectors(graph, *sliced),
        )
    builder.op("Identity", vectors, output=OUTPUT_NAME)
    builder.add_output(OUTPUT_NAME, TensorProto.FLOAT, ["batch", parsed.hidden_size])
    return builder.build(normalized=normalize)


class EncoderBuilder:
    """Emits BertModel's embedding block and layers into one graph (or Loop body).

    Each tensor is looked up, and so checked, as its nodes are emitted. MPNet reuses the
    layers by subclassing: `attention_mask` may return any additive score bias.
    """

    def __init__(
        self,
        builder: GraphBuilder,
        source: WeightSource,
        config: BertConfig,
        *,
        fused: bool,
        fused_attention: bool = False,
        fold_attention_biases: bool = False,
    ) -> None:
        self._builder = builder
        self._source = source
        self._config = config
        self._fused = fused  # layer norms (and attention)
        self._fused_attention = fused or fused_attention
        # Exact up to float rounding, for the standard (unfused) attention only:
        # - K's bias adds q . b_k to every score of query q alike, and softmax ignores a
        #   constant added to a whole row, so it is dropped;
        # - V's bias passes through the attention average unchanged (softmax rows sum to 1),
        #   so it is added to the output projection's bias instead, as W_o b_v.
        # Two fewer passes over [batch, seq, hidden] per layer: on MiniLM at 128 tokens
        # (2 cores), +0.4% to +2.7% tokens/s in paired runs; no change at 16 tokens.
        self._fold = fold_attention_biases and not self._fused_attention

    def embeddings(self, input_ids: str) -> str:
        """LayerNorm(word[id] + position[i] + token_type[0])."""
        config, builder, get = self._config, self._builder, self._source.get
        size = config.hidden_size
        words = get("embeddings.word_embeddings.weight", (config.vocab_size, size))
        positions = get("embeddings.position_embeddings.weight", (config.max_positions, size))
        types = get("embeddings.token_type_embeddings.weight", (config.type_vocab_size, size))
        word_rows = builder.op("Gather", builder.initializer("word_embeddings", words), input_ids)
        position_table = builder.initializer("position_embeddings", positions + types[0])
        shape = builder.op("Shape", input_ids)
        length = builder.op("Slice", shape, builder.int64s("one", [1]), builder.int64s("two", [2]))
        zero = builder.int64s("zero", [0])
        position_rows = builder.op("Slice", position_table, zero, length, zero)
        summed = builder.op("Add", word_rows, position_rows)
        return self._layer_norm(summed, "embeddings.LayerNorm")

    def attention_mask(self, mask: str) -> str:
        """The int64 mask as attention consumes it: int32 for the fused Attention operator,
        else the additive bias (1 - mask) * filter, float [batch, 1, 1, seq]."""
        builder = self._builder
        if self._fused_attention:
            return builder.op("Cast", mask, to=TensorProto.INT32)
        as_float = builder.op("Cast", mask, to=TensorProto.FLOAT)
        inverted = builder.op("Sub", builder.float_scalar("one_f", 1.0), as_float)
        bias = builder.op("Mul", inverted, builder.float_scalar("mask_filter", MASK_FILTER_VALUE))
        return builder.op("Unsqueeze", bias, builder.int64s("axes_1_2", [1, 2]))

    def layer(self, index: int, hidden: str, attention_mask: str) -> str:
        """One post-norm layer: attention, add & norm, feed-forward, add & norm."""
        config = self._config
        prefix = f"encoder.layer.{index}."
        context = self._self_attention(prefix + "attention.self.", hidden, attention_mask)
        value_bias = (
            self._source.get(prefix + "attention.self.value.bias", (config.hidden_size,))
            if self._fold
            else None
        )
        hidden = self._dense_residual_norm(
            prefix + "attention.output.", context, hidden, config.hidden_size, value_bias
        )
        intermediate = self._intermediate(prefix + "intermediate.dense", hidden)
        return self._dense_residual_norm(
            prefix + "output.", intermediate, hidden, config.intermediate_size
        )

    def _self_attention(self, prefix: str, hidden: str, attention_mask: str) -> str:
        """softmax(Q K^T / sqrt(d) + mask) V per head, heads merged back to [batch, seq, hidden].

        Three MatMuls rather than one packed [hidden, 3 * hidden] product: splitting the packed
        result costs a pass over it and measured slower. 1/sqrt(d) is folded into Q's weights.
        """
        config, builder = self._config, self._builder
        size = config.hidden_size
        weights = [self._source.get(f"{prefix}{part}.weight", (size, size)).T for part in QKV_NAMES]
        biases = [self._source.get(f"{prefix}{part}.bias", (size,)) for part in QKV_NAMES]
        if self._fused_attention:
            return builder.op(
                "Attention",
                hidden,
                builder.initializer(prefix + "qkv.weight", np.concatenate(weights, axis=1)),
                builder.initializer(prefix + "qkv.bias", np.concatenate(biases)),
                attention_mask,
                domain=MICROSOFT_DOMAIN,
                num_heads=config.num_heads,
                mask_filter_value=MASK_FILTER_VALUE,
            )
        scale = np.float32(1.0 / math.sqrt(config.head_size))
        weights[0], biases[0] = weights[0] * scale, biases[0] * scale
        kept_biases: list[FloatArray | None] = [biases[0], None, None]
        if not self._fold:
            kept_biases[1:] = biases[1:]
        split_heads = builder.int64s("split_heads", [0, 0, config.num_heads, config.head_size])
        query, key, value = (
            builder.op(
                "Transpose",
                builder.op(
                    "Reshape", self._linear(hidden, prefix + part, weight, bias), split_heads
                ),
                perm=_HEADS_FIRST_KEYS_T if part == "key" else _HEADS_FIRST,
            )
            for part, weight, bias in zip(QKV_NAMES, weights, kept_biases, strict=True)
        )
        scores = builder.op("Add", builder.op("MatMul", query, key), attention_mask)
        context = builder.op("MatMul", builder.op("Softmax", scores, axis=-1), value)
        context = builder.op("Transpose", context, perm=_HEADS_FIRST)
        return builder.op("Reshape", context, builder.int64s("merge_heads", [0, 0, size]))

    def _dense_residual_norm(
        self,
        prefix: str,
        states: str,
        residual: str,
        in_features: int,
        states_bias: FloatArray | None = None,
    ) -> str:
        """LayerNorm((states + states_bias) @ W + b + residual), the block after attention and
        after the FFN; `states_bias` (V's folded bias) goes into b."""
        config, builder = self._config, self._builder
        weight = self._source.get(prefix + "dense.weight", (config.hidden_size, in_features))
        bias = self._source.get(prefix + "dense.bias", (config.hidden_size,))
        if states_bias is not None:
            bias = (bias.astype(np.float64) + weight.astype(np.float64) @ states_bias).astype(
                np.float32
            )
        if not self._fused:
            projected = self._linear(states, prefix + "dense", weight.T, bias)
            return self._layer_norm(builder.op("Add", projected, residual), prefix + "LayerNorm")
        weight_name = builder.initializer(prefix + "dense.weight", weight.T)
        gamma, beta = self._norm_weights(prefix + "LayerNorm")
        return builder.op(
            "SkipLayerNormalization",
            builder.op("MatMul", states, weight_name),
            residual,
            gamma,
            beta,
            builder.initializer(prefix + "dense.bias", bias),
            domain=MICROSOFT_DOMAIN,
            epsilon=config.layer_norm_eps,
        )

    def _intermediate(self, name: str, hidden: str) -> str:
        """activation(hidden @ W + b); ONNX Runtime fuses the GELU forms with the bias add."""
        config = self._config
        shape = (config.intermediate_size, config.hidden_size)
        weight = self._source.get(name + ".weight", shape)
        bias = self._source.get(name + ".bias", shape[:1])
        projected = self._linear(hidden, name, weight.T, bias)
        return activation(self._builder, projected, config.activation)

    def _linear(self, states: str, name: str, weight: FloatArray, bias: FloatArray | None) -> str:
        """states @ weight + bias, with `weight` already [in, out]."""
        builder = self._builder
        product = builder.op("MatMul", states, builder.initializer(name + ".weight", weight))
        if bias is None:
            return product
        return builder.op("Add", product, builder.initializer(name + ".bias", bias))

    def _norm_weights(self, prefix: str) -> tuple[str, str]:
        """LayerNorm gamma and beta (old checkpoints name them gamma/beta, not weight/bias)."""
        size = (self._config.hidden_size,)
        gamma = self._source.get(prefix + ".weight", size, aliases=[prefix + ".gamma"])
        beta = self._source.get(prefix + ".bias", size, aliases=[prefix + ".beta"])
        builder = self._builder
        return builder.initializer(prefix + ".weight", gamma), builder.initializer(
            prefix + ".bias", beta
        )

    def _layer_norm(self, states: str, prefix: str) -> str:
        gamma, beta = self._norm_weights(prefix)
        return self._builder.op(
            "LayerNormalization", states, gamma, beta, axis=-1, epsilon=self._config.layer_norm_eps
        )


def activation(builder: GraphBuilder, states: str, activation: Activation) -> str:
    """The FFN activation, in the forms ONNX Runtime fuses into BiasGelu and FastGelu."""
    if activation == "relu":
        return builder.op("Relu", states)
    if activation == "gelu":
        # 0.5 * x * (1 + erf(x / sqrt(2)))
        scaled = builder.op("Div", states, builder.float_scalar("sqrt2", math.sqrt(2.0)))
        inner = builder.op("Erf", scaled)
    else:
        # 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))
        cubed = builder.op("Pow", states, builder.float_scalar("three", 3.0))
        coefficient = builder.float_scalar("gelu_coefficient", 0.044715)
        widened = builder.op("Add", states, builder.op("Mul", cubed, coefficient))
        factor = builder.float_scalar("sqrt_2_over_pi", math.sqrt(2.0 / math.pi))
        inner = builder.op("Tanh", builder.op("Mul", widened, factor))
    one_plus = builder.op("Add", inner, builder.float_scalar("one_f", 1.0))
    half = builder.op("Mul", states, builder.float_scalar("half", 0.5))
    return builder.op("Mul", half, one_plus)


# Earlier names, still imported by the MPNet and Nomic-BERT builders.
