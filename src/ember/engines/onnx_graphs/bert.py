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
)

Pooling = Literal["mean", "cls", "lasttoken"]
Activation = Literal["gelu", "gelu_tanh", "relu"]

OUTPUT_NAME = "sentence_embedding"
# Hugging Face's own names for the activations; the tanh forms are one formula under three names.
_ACTIVATIONS: dict[str, Activation] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
# Added to the scores of padded keys: exp() of it underflows to exactly 0 in float32.
_MASK_FILTER_VALUE = -10000.0
_QKV = ("query", "key", "value")


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
        parsed = cls(
            hidden_size=_positive_int(config, "hidden_size"),
            num_heads=_positive_int(config, "num_attention_heads"),
            num_layers=_positive_int(config, "num_hidden_layers"),
            intermediate_size=_positive_int(config, "intermediate_size"),
            activation=_ACTIVATIONS[hidden_act],
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            vocab_size=_positive_int(config, "vocab_size"),
            max_positions=_positive_int(config, "max_position_embeddings"),
            type_vocab_size=int(config.get("type_vocab_size", 2)),
        )
        if parsed.hidden_size % parsed.num_heads:
            raise ValueError(
                f"hidden_size {parsed.hidden_size} is not a multiple of "
                f"num_attention_heads {parsed.num_heads}"
            )
        position_type = config.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"unsupported position_embedding_type {position_type!r}")
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
    fused: bool = True,
) -> onnx.ModelProto:
    """The sentence-embedding graph of a BERT checkpoint.

    Inputs `input_ids` and `attention_mask` (int64 [batch, sequence]); output
    `sentence_embedding` (float32 [batch, hidden]), pooled as sentence-transformers does and
    L2-normalised if asked. Token types are always 0, so that row is folded into the position
    table. `fused` uses ONNX Runtime's com.microsoft operators (faster on CPU); without it the
    graph uses standard opset-17 operators only, for runtimes that lack them.
    """
    parsed = BertConfig.from_mapping(config)
    source = WeightSource(weights, prefixes=("", "bert."))
    builder = GraphBuilder("bert_sentence_embedding")
    input_ids = builder.add_input("input_ids", TensorProto.INT64, ["batch", "sequence"])
    mask = builder.add_input("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    layers = _EncoderBuilder(builder, source, parsed, fused=fused)
    hidden = layers.embeddings(input_ids)
    attention_mask = layers.attention_mask(mask)
    for index in range(parsed.num_layers):
        hidden = layers.layer(index, hidden, attention_mask)
    pooled = _pool(builder, hidden, mask, pooling)
    if normalize:
        pooled = _l2_normalize(builder, pooled)
    builder.op("Identity", pooled, output=OUTPUT_NAME)
    builder.add_output(OUTPUT_NAME, TensorProto.FLOAT, ["batch", parsed.hidden_size])
    return builder.build()


class _EncoderBuilder:
    """Emits the embedding block and the transformer layers of one BERT encoder."""

    def __init__(
        self, builder: GraphBuilder, source: WeightSource, config: BertConfig, *, fused: bool
    ) -> None:
        self._builder = builder
        self._source = source
        self._config = config
        self._fused = fused

    def embeddings(self, input_ids: str) -> str:
        """LayerNorm(word[id] + position[i] + token_type[0])."""
        config, builder = self._config, self._builder
        hidden = config.hidden_size
        words = self._source.get("embeddings.word_embeddings.weight", (config.vocab_size, hidden))
        positions = self._source.get(
            "embeddings.position_embeddings.weight", (config.max_positions, hidden)
        )
        token_types = self._source.get(
            "embeddings.token_type_embeddings.weight", (config.type_vocab_size, hidden)
        )
        word_table = builder.initializer("word_embeddings", words)
        position_table = builder.initializer("position_embeddings", positions + token_types[0])
        gathered = builder.op("Gather", word_table, input_ids)
        sequence = builder.op(
            "Slice",
            builder.op("Shape", input_ids),
            builder.int64s("one", [1]),
            builder.int64s("two", [2]),
        )
        position_rows = builder.op(
            "Slice",
            position_table,
            builder.int64s("zero", [0]),
            sequence,
            builder.int64s("zero", [0]),
        )
        summed = builder.op("Add", gathered, position_rows)
        return self._layer_norm(summed, "embeddings.LayerNorm")

    def attention_mask(self, mask: str) -> str:
        """The mask in the form the attention blocks consume it."""
        builder = self._builder
        if self._fused:
            return builder.op("Cast", mask, to=TensorProto.INT32)
        # (1 - mask) * filter, shaped [batch, 1, 1, sequence] to broadcast over heads and queries.
        as_float = builder.op("Cast", mask, to=TensorProto.FLOAT)
        inverted = builder.op("Sub", builder.float_scalar("one_f", 1.0), as_float)
        bias = builder.op("Mul", inverted, builder.float_scalar("mask_filter", _MASK_FILTER_VALUE))
        return builder.op("Unsqueeze", bias, builder.int64s("axes_1_2", [1, 2]))

    def layer(self, index: int, hidden: str, attention_mask: str) -> str:
        prefix = f"encoder.layer.{index}."
        context = self._self_attention(prefix + "attention.self.", hidden, attention_mask)
        size = self._config.hidden_size
        hidden = self._dense_residual_norm(prefix + "attention.output.", context, hidden, size)
        intermediate = self._intermediate(prefix + "intermediate.dense", hidden)
        inner = self._config.intermediate_size
        return self._dense_residual_norm(prefix + "output.", intermediate, hidden, inner)

    def _self_attention(self, prefix: str, hidden: str, attention_mask: str) -> str:
        config, builder = self._config, self._builder
        size = config.hidden_size
        weights = [self._source.get(f"{prefix}{part}.weight", (size, size)) for part in _QKV]
        biases = [self._source.get(f"{prefix}{part}.bias", (size,)) for part in _QKV]
        packed_weight = np.concatenate([weight.T for weight in weights], axis=1)
        packed_bias = np.concatenate(biases)
        if self._fused:
            return builder.op(
                "Attention",
                hidden,
                builder.initializer(prefix + "qkv.weight", packed_weight),
                builder.initializer(prefix + "qkv.bias", packed_bias),
                attention_mask,
                domain=MICROSOFT_DOMAIN,
                num_heads=config.num_heads,
                mask_filter_value=_MASK_FILTER_VALUE,
            )
        return self._standard_attention(prefix, hidden, attention_mask, packed_weight, packed_bias)

    def _standard_attention(
        self,
        prefix: str,
        hidden: str,
        attention_mask: str,
        packed_weight: FloatArray,
        packed_bias: FloatArray,
    ) -> str:
        """Multi-head attention from MatMul/Softmax, the 1/sqrt(d) scale folded into Q."""
        config, builder = self._config, self._builder
        scale = np.ones(3 * config.hidden_size, dtype=np.float32)
        scale[: config.hidden_size] = 1.0 / math.sqrt(config.head_size)
        qkv = self._linear(hidden, prefix + "qkv", packed_weight * scale, packed_bias * scale)
        split_heads = builder.int64s("qkv_heads", [0, 0, 3, config.num_heads, config.head_size])
        heads = builder.op("Reshape", qkv, split_heads)
        # [batch, seq, 3, heads, head] -> [3, batch, heads, seq, head]
        heads = builder.op("Transpose", heads, perm=[2, 0, 3, 1, 4])
        query, key, value = (
            builder.op("Gather", heads, builder.int64_scalar("index", part), axis=0)
            for part in range(3)
        )
        key_t = builder.op("Transpose", key, perm=[0, 1, 3, 2])
        scores = builder.op("Add", builder.op("MatMul", query, key_t), attention_mask)
        probs = builder.op("Softmax", scores, axis=-1)
        context = builder.op("MatMul", probs, value)
        context = builder.op("Transpose", context, perm=[0, 2, 1, 3])
        merged = builder.int64s("merge_heads", [0, 0, config.hidden_size])
        return builder.op("Reshape", context, merged)

    def _dense_residual_norm(
        self, prefix: str, states: str, residual: str, in_features: int
    ) -> str:
        """LayerNorm(states @ W + b + residual), the block after attention and after the FFN."""
        config, builder = self._config, self._builder
        size = config.hidden_size
        weight = self._source.get(prefix + "dense.weight", (size, in_features))
        bias = self._source.get(prefix + "dense.bias", (size,))
        if not self._fused:
            projected = self._linear(states, prefix + "dense", weight.T, bias)
            return self._layer_norm(builder.op("Add", projected, residual), prefix + "LayerNorm")
        projected = builder.op(
            "MatMul", states, builder.initializer(prefix + "dense.weight", weight.T)
        )
        gamma, beta = self._norm_weights(prefix + "LayerNorm")
        return builder.op(
            "SkipLayerNormalization",
            projected,
            residual,
            gamma,
            beta,
            builder.initializer(prefix + "dense.bias", bias),
            domain=MICROSOFT_DOMAIN,
            epsilon=config.layer_norm_eps,
        )

    def _intermediate(self, name: str, hidden: str) -> str:
        config, builder = self._config, self._builder
        shape = (config.intermediate_size, config.hidden_size)
        weight = self._source.get(name + ".weight", shape)
        bias = self._source.get(name + ".bias", (config.intermediate_size,))
        if self._fused and config.activation != "relu":
            product = builder.op("MatMul", hidden, builder.initializer(name + ".weight", weight.T))
            op_type = "BiasGelu" if config.activation == "gelu" else "FastGelu"
            bias_name = builder.initializer(name + ".bias", bias)
            return builder.op(op_type, product, bias_name, domain=MICROSOFT_DOMAIN)
        projected = self._linear(hidden, name, weight.T, bias)
        return _activation(builder, projected, config.activation)

    def _linear(self, states: str, name: str, weight: FloatArray, bias: FloatArray) -> str:
        """states @ weight + bias, with `weight` already [in, out]."""
        builder = self._builder
        product = builder.op("MatMul", states, builder.initializer(name + ".weight", weight))
        return builder.op("Add", product, builder.initializer(name + ".bias", bias))

    def _norm_weights(self, prefix: str) -> tuple[str, str]:
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
            "LayerNormalization",
            states,
            gamma,
            beta,
            axis=-1,
            epsilon=self._config.layer_norm_eps,
        )


def _activation(builder: GraphBuilder, states: str, activation: Activation) -> str:
    if activation == "relu":
        return builder.op("Relu", states)
    if activation == "gelu":
        # 0.5 * x * (1 + erf(x / sqrt(2))), the form ONNX Runtime fuses into its Gelu kernel.
        scaled = builder.op("Div", states, builder.float_scalar("sqrt2", math.sqrt(2.0)))
        inner = builder.op("Erf", scaled)
    else:
        # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
        cubed = builder.op("Pow", states, builder.float_scalar("three", 3.0))
        coefficient = builder.float_scalar("gelu_coefficient", 0.044715)
        widened = builder.op("Add", states, builder.op("Mul", cubed, coefficient))
        factor = builder.float_scalar("sqrt_2_over_pi", math.sqrt(2.0 / math.pi))
        inner = builder.op("Tanh", builder.op("Mul", widened, factor))
    one_plus = builder.op("Add", inner, builder.float_scalar("one_f", 1.0))
    half = builder.op("Mul", states, builder.float_scalar("half", 0.5))
    return builder.op("Mul", half, one_plus)


def _pool(builder: GraphBuilder, hidden: str, mask: str, pooling: Pooling) -> str:
    """[batch, seq, hidden] -> [batch, hidden] as sentence-transformers' Pooling module does."""
    if pooling == "cls":
        return builder.op("Gather", hidden, builder.int64_scalar("index", 0), axis=1)
    mask_float = builder.op("Cast", mask, to=TensorProto.FLOAT)
    weights = mask_float if pooling == "mean" else _last_token_one_hot(builder, mask)
    # [batch, 1, seq] @ [batch, seq, hidden]: a weighted sum over tokens in one batched GEMM.
    summed = builder.op(
        "MatMul", builder.op("Unsqueeze", weights, builder.int64s("axis_1", [1])), hidden
    )
    summed = builder.op("Squeeze", summed, builder.int64s("axis_1", [1]))
    if pooling != "mean":
        return summed
    counts = builder.op("ReduceSum", mask_float, builder.int64s("axis_1", [1]), keepdims=1)
    counts = builder.op("Max", counts, builder.float_scalar("min_count", 1e-9))
    return builder.op("Div", summed, counts)


def _last_token_one_hot(builder: GraphBuilder, mask: str) -> str:
    """Float [batch, seq] with a 1 at each row's last position whose mask is 1 (0 if none)."""
    positions = builder.op(
        "Range",
        builder.int64_scalar("zero", 0),
        builder.op("Gather", builder.op("Shape", mask), builder.int64_scalar("index", 1), axis=0),
        builder.int64_scalar("one", 1),
    )
    last = builder.op("ReduceMax", builder.op("Mul", mask, positions), axes=[1], keepdims=1)
    one_hot = builder.op("Equal", positions, last)
    return builder.op("Cast", one_hot, to=TensorProto.FLOAT)


def _l2_normalize(builder: GraphBuilder, pooled: str) -> str:
    """x / max(||x||, 1e-12), as sentence-transformers' Normalize (torch.nn.functional.normalize)."""
    squares = builder.op("ReduceSumSquare", pooled, axes=[1], keepdims=1)
    norms = builder.op("Max", builder.op("Sqrt", squares), builder.float_scalar("min_norm", 1e-12))
    return builder.op("Div", pooled, norms)
