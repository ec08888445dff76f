"""Nomic-BERT encoders (nomic-embed-text v1, v1.5) as ONNX graphs, from config.json and weights."""

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
    OUTPUT_NAME,
    Pooling,
    activation,
)
from ember.engines.onnx_graphs.builder import (
    MICROSOFT_DOMAIN,
    FloatArray,
    GraphBuilder,
    WeightSource,
    l2_normalize,
    pool_tokens,
)
from ember.engines.onnx_graphs.nomic_bert_config import NomicBertConfig, default_settings

__all__ = ["NomicBertConfig", "build_nomic_bert_graph", "default_settings"]

MASK_FILTER_VALUE = -10000.0
# Added (before the 1/sqrt(d) scale) to the scores of padded keys: exp() of it is exactly 0.
_PADDED_KEY_SCORE = -1e6
# Checkpoints saved from NomicBertForPreTraining prefix `bert.`; base_model_prefix is `model`.
_PREFIXES = ("", "bert.", "model.")


def build_nomic_bert_graph(
    config: Mapping[str, Any],
    weights: Mapping[str, npt.NDArray[Any]],
    *,
    pooling: Pooling,
    normalize: bool,
    fused: bool = True,
) -> onnx.ModelProto:
    """The sentence-embedding graph of a NomicBertModel checkpoint.

    Inputs `input_ids` and `attention_mask` (int64 [batch, sequence], right-padded); output
    `sentence_embedding` (float32 [batch, hidden]). `fused` uses ONNX Runtime's com.microsoft
    operators (RotaryEmbedding, MultiHeadAttention, SkipLayerNormalization); without it the
    graph uses standard opset-17 operators only. Raises ValueError naming a bad config field
    or a missing or mis-shaped tensor.
    """
    parsed = NomicBertConfig.from_mapping(config)
    source = WeightSource(weights, prefixes=_PREFIXES)
    builder = GraphBuilder("nomic_bert_sentence_embedding")
    input_ids = builder.add_input("input_ids", TensorProto.INT64, ["batch", "sequence"])
    mask = builder.add_input("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    encoder = EncoderBuilder(builder, source, parsed, fused=fused)
    hidden = encoder.embeddings(input_ids)
    rotary = encoder.rotary_tables(input_ids, mask)
    padding = encoder.padding(mask)
    for index in range(parsed.num_layers):
        hidden = encoder.layer(index, hidden, padding, rotary)
    pooled = pool_tokens(builder, hidden, mask, pooling)
    if normalize:
        pooled = l2_normalize(builder, pooled)
    builder.op("Identity", pooled, output=OUTPUT_NAME)
    builder.add_output(OUTPUT_NAME, TensorProto.FLOAT, ["batch", parsed.hidden_size])
    return builder.build(normalized=normalize)


@dataclass(frozen=True)
class _Rotary:
    """cos and sin of every position's angles ([seq, r/2], or [batch, seq, r/2] when each row
    has its own base), and, for the fused operator, the rows each token reads from them."""

    cos: str
    sin: str
    position_ids: str


@dataclass(frozen=True)
class _Padding:
    """How attention ignores padded keys: an additive score bias [batch, 1, 1, seq] (standard
    operators), or one extra value per head for q (1), k (0 or a large negative) and v (0)."""

    score_bias: str | None = None
    extra_columns: tuple[str, str, str] | None = None


class EncoderBuilder:
    """Emits the embedding block, the rotary tables and the post-norm layers of one encoder."""

    def __init__(
        self, builder: GraphBuilder, source: WeightSource, config: NomicBertConfig, *, fused: bool
    ) -> None:
        self._builder = builder
        self._source = source
        self._config = config
        self._fused = fused

    def embeddings(self, input_ids: str) -> str:
        """emb_ln(word[id] + token_type[0] (+ position[i] when there is no rotary))."""
        config, builder = self._config, self._builder
        hidden = config.hidden_size
        table = self._source.get("embeddings.word_embeddings.weight", (config.vocab_rows, hidden))
        if config.type_vocab_size > 0:
            token_types = self._source.get(
                "embeddings.token_type_embeddings.weight", (config.type_vocab_size, hidden)
            )
            # Token types are always 0: folding the row in is the same float32 sum, done once.
            table = table + token_types[0]
        summed = builder.op("Gather", builder.initializer("word_embeddings", table), input_ids)
        if config.rotary_dim == 0:
            positions = self._source.get(
                "embeddings.position_embeddings.weight", (config.max_positions, hidden)
            )
            rows = builder.op(
                "Slice",
                builder.initializer("position_embeddings", positions),
                builder.int64s("zero", [0]),
                self._sequence_length(input_ids),
                builder.int64s("zero", [0]),
            )
            summed = builder.op("Add", summed, rows)
        return self._layer_norm(summed, "emb_ln")

    def rotary_tables(self, input_ids: str, mask: str) -> _Rotary | None:
        """Angles position * base^(-2i/r) in float32, as NomicBertRotaryEmbedding makes them.

        With rotary_scaling_factor (dynamic NTK) the base grows with the length; upstream uses
        the padded batch length, here each row uses its own, so a text's vector never depends
        on what it was batched with (and equals upstream's for a batch of one).
        """
        config, builder = self._config, self._builder
        if config.rotary_dim == 0:
            return None
        half = config.rotary_dim // 2
        exponents = np.arange(0, config.rotary_dim, 2, dtype=np.float32) / np.float32(
            config.rotary_dim
        )
        sequence = builder.op(
            "Squeeze", self._sequence_length(input_ids), builder.int64s("axis_0", [0])
        )
        steps = builder.op(
            "Range", builder.int64_scalar("zero", 0), sequence, builder.int64_scalar("one", 1)
        )
        positions = builder.op("Cast", steps, to=TensorProto.FLOAT)
        if config.rotary_scaling_factor is None:
            inv_freq = (1.0 / np.float32(config.rotary_base) ** exponents).astype(np.float32)
            column = builder.op("Unsqueeze", positions, builder.int64s("axis_1", [1]))
            angles = builder.op("Mul", column, builder.initializer("rotary_inv_freq", inv_freq))
            position_ids = builder.int64s("position_offset", [0])
        else:
            inv_freq_rows = builder.op("Reciprocal", self._row_bases(mask, exponents))
            grid = builder.op("Unsqueeze", positions, builder.int64s("axes_0_2", [0, 2]))
            per_row = builder.op("Unsqueeze", inv_freq_rows, builder.int64s("axis_1", [1]))
            angles = builder.op("Mul", grid, per_row)  # [batch, seq, r/2]
            position_ids = self._flat_position_ids(mask)
        cos, sin = builder.op("Cos", angles), builder.op("Sin", angles)
        if self._fused and config.rotary_scaling_factor is not None:
            # The fused operator wants one table: rows batch * seq, read through position_ids.
            flat = builder.int64s("rotary_rows", [-1, half])
            cos, sin = builder.op("Reshape", cos, flat), builder.op("Reshape", sin, flat)
        return _Rotary(cos, sin, position_ids)

    def _row_bases(self, mask: str, exponents: FloatArray) -> str:
        """[batch, r/2]: base_row ** (2i/r), base_row grown past max_trained_positions."""
        config, builder = self._config, self._builder
        factor = float(config.rotary_scaling_factor or 1.0)
        trained = float(config.max_trained_positions)
        lengths = builder.op(
            "ReduceSum",
            builder.op("Cast", mask, to=TensorProto.FLOAT),
            builder.int64s("axis_1", [1]),
            keepdims=1,
        )
        # base * (factor * len / trained - (factor - 1)) ** (r / (r - 2))
        ratio = builder.op("Mul", lengths, builder.float_scalar("ntk_slope", factor / trained))
        ratio = builder.op("Sub", ratio, builder.float_scalar("ntk_offset", factor - 1.0))
        power = config.rotary_dim / (config.rotary_dim - 2)
        grown = builder.op("Pow", ratio, builder.float_scalar("ntk_power", power))
        grown = builder.op("Mul", grown, builder.float_scalar("rotary_base", config.rotary_base))
        longer = builder.op("Greater", lengths, builder.float_scalar("ntk_trained", trained))
        base = builder.op(
            "Where", longer, grown, builder.float_scalar("rotary_base", config.rotary_base)
        )
        return builder.op("Pow", base, builder.initializer("rotary_exponents", exponents))

    def _flat_position_ids(self, mask: str) -> str:
        """[[0 .. seq-1], [seq .. 2 seq-1], ...]: each row reads its own block of the table."""
        builder = self._builder
        shape = builder.op("Shape", mask)
        count = builder.op("ReduceProd", shape, keepdims=0)
        steps = builder.op(
            "Range", builder.int64_scalar("zero", 0), count, builder.int64_scalar("one", 1)
        )
        return builder.op("Reshape", steps, shape)

    def padding(self, mask: str) -> _Padding:
        """What every layer's attention needs to leave padded keys out.

        The fused path never hands MultiHeadAttention a mask: with one, ONNX Runtime's CPU
        kernel materialises every [seq, seq] score matrix (gigabytes at 8192 tokens); without,
        it runs flash attention. The mask rides in an extra head dimension instead, where
        q' . k' = q . k + key_bias exactly.
        """
        builder = self._builder
        as_float = builder.op("Cast", mask, to=TensorProto.FLOAT)
        inverted = builder.op("Sub", builder.float_scalar("one_f", 1.0), as_float)
        if not self._fused:
            bias = builder.op(
                "Mul", inverted, builder.float_scalar("mask_filter", MASK_FILTER_VALUE)
            )
            return _Padding(
                score_bias=builder.op("Unsqueeze", bias, builder.int64s("axes_1_2", [1, 2]))
            )
        key_bias = builder.op(
            "Mul", inverted, builder.float_scalar("padded_key_score", _PADDED_KEY_SCORE)
        )
        key_bias = builder.op("Unsqueeze", key_bias, builder.int64s("axes_2_3", [2, 3]))
        # [batch, seq, heads, 1]
        shape = builder.op(
            "Concat",
            builder.op("Shape", mask),
            builder.int64s("heads_one", [self._config.num_heads, 1]),
            axis=0,
        )
        columns = (
            builder.op("Expand", builder.float_scalar("one_f", 1.0), shape),
            builder.op("Expand", key_bias, shape),
            builder.op("Expand", builder.float_scalar("zero_f", 0.0), shape),
        )
        return _Padding(extra_columns=columns)

    def layer(self, index: int, hidden: str, padding: _Padding, rotary: _Rotary | None) -> str:
        """Post-norm block: norm1(attn(h) + h), then norm2(mlp(h) + h)."""
        prefix = f"encoder.layers.{index}."
        size = self._config.hidden_size
        context = self._attention(prefix + "attn.", hidden, padding, rotary)
        out_weight = self._source.get(prefix + "attn.out_proj.weight", (size, size))
        out_bias = self._optional_bias(prefix + "attn.out_proj.bias", size, self._config.qkv_bias)
        hidden = self._project_add_norm(
            context, out_weight, out_bias, hidden, prefix + "attn.out_proj", prefix + "norm1"
        )
        inner = self._mlp_inner(prefix + "mlp.", hidden)
        width = self._config.intermediate_size
        fc2_weight = self._source.get(prefix + "mlp.fc2.weight", (size, width))
        fc2_bias = self._optional_bias(prefix + "mlp.fc2.bias", size, self._config.fc2_bias)
        return self._project_add_norm(
            inner, fc2_weight, fc2_bias, hidden, prefix + "mlp.fc2", prefix + "norm2"
        )

    def _attention(
        self, prefix: str, hidden: str, padding: _Padding, rotary: _Rotary | None
    ) -> str:
        config = self._config
        size = config.hidden_size
        weight = self._source.get(prefix + "Wqkv.weight", (3 * size, size))
        bias = self._optional_bias(prefix + "Wqkv.bias", 3 * size, config.qkv_bias)
        # Wqkv's rows are q, k, v ("(three h d)"): three projections need no Split copies.
        projections = []
        for part, name in enumerate(("Wq", "Wk", "Wv")):
            rows = slice(part * size, (part + 1) * size)
            part_weight, part_bias = weight[rows], None if bias is None else bias[rows]
            if name == "Wq" and not self._fused:
                # softmax(q k^T / sqrt(d)): the scale goes into q; rotary commutes with it.
                scale = np.float32(1.0 / math.sqrt(config.head_size))
                part_weight = part_weight * scale
                part_bias = None if part_bias is None else part_bias * scale
            projections.append(self._linear(hidden, prefix + name, part_weight, part_bias))
        query, key, value = projections
        if rotary is not None:
            query, key = self._rotate(query, rotary), self._rotate(key, rotary)
        if padding.extra_columns is not None:
            return self._fused_attention(query, key, value, padding.extra_columns)
        assert padding.score_bias is not None
        return self._standard_attention(query, key, value, padding.score_bias)

    def _fused_attention(
        self, query: str, key: str, value: str, columns: tuple[str, str, str]
    ) -> str:
        """MultiHeadAttention over heads one value wider; the extra output value is dropped."""
        config, builder = self._config, self._builder
        heads, head = config.num_heads, config.head_size
        split = builder.int64s("heads", [0, 0, heads, head])
        wide = builder.int64s("merge", [0, 0, -1])
        widened = [
            builder.op(
                "Reshape",
                builder.op("Concat", builder.op("Reshape", states, split), column, axis=3),
                wide,
            )
            for states, column in zip((query, key, value), columns, strict=True)
        ]
        context = builder.op(
            "MultiHeadAttention",
            *widened,
            domain=MICROSOFT_DOMAIN,
            num_heads=heads,
            scale=1.0 / math.sqrt(head),
        )
        context = builder.op(
            "Reshape", context, builder.int64s("wide_heads", [0, 0, heads, head + 1])
        )
        return builder.op("Reshape", self._slice_last(context, 0, head), wide)

    def _rotate(self, states: str, rotary: _Rotary) -> str:
        """x * cos + rotate_half(x) * sin on the first rotary_dim values of every head."""
        config, builder = self._config, self._builder
        heads = config.num_heads
        if self._fused:
            attributes: dict[str, Any] = {}
            if config.rotary_dim != config.head_size:
                attributes["rotary_embedding_dim"] = config.rotary_dim
            return builder.op(
                "RotaryEmbedding",
                states,
                rotary.position_ids,
                rotary.cos,
                rotary.sin,
                domain=MICROSOFT_DOMAIN,
                num_heads=heads,
                interleaved=int(config.rotary_interleaved),
                **attributes,
            )
        head, half = config.head_size, config.rotary_dim // 2
        split = builder.op("Reshape", states, builder.int64s("heads", [0, 0, heads, head]))
        # [.., seq, r/2] -> [.., seq, 1, r/2]: broadcast over the heads axis.
        cos = builder.op("Unsqueeze", rotary.cos, builder.int64s("axis_m2", [-2]))
        sin = builder.op("Unsqueeze", rotary.sin, builder.int64s("axis_m2", [-2]))
        rotating = self._slice_last(split, 0, 2 * half)
        if config.rotary_interleaved:
            pairs = builder.op("Reshape", rotating, builder.int64s("pairs", [0, 0, heads, half, 2]))
            first = builder.op("Gather", pairs, builder.int64_scalar("index", 0), axis=4)
            second = builder.op("Gather", pairs, builder.int64_scalar("index", 1), axis=4)
        else:
            first = self._slice_last(split, 0, half)
            second = self._slice_last(split, half, 2 * half)
        new_first = builder.op("Sub", builder.op("Mul", first, cos), builder.op("Mul", second, sin))
        new_second = builder.op(
            "Add", builder.op("Mul", second, cos), builder.op("Mul", first, sin)
        )
        if config.rotary_interleaved:
            axis = builder.int64s("axis_4", [4])
            stacked = builder.op(
                "Concat",
                builder.op("Unsqueeze", new_first, axis),
                builder.op("Unsqueeze", new_second, axis),
                axis=4,
            )
            parts = [builder.op("Reshape", stacked, builder.int64s("rotary_width", [0, 0, 0, -1]))]
        else:
            parts = [new_first, new_second]
        if 2 * half < head:
            parts.append(self._slice_last(split, 2 * half, head))
        joined = builder.op("Concat", *parts, axis=3)
        return builder.op("Reshape", joined, builder.int64s("merge", [0, 0, -1]))

    def _slice_last(self, states: str, start: int, end: int) -> str:
        builder = self._builder
        return builder.op(
            "Slice",
            states,
            builder.int64s("start", [start]),
            builder.int64s("end", [end]),
            builder.int64s("axis_3", [3]),
        )

    def _standard_attention(self, query: str, key: str, value: str, attention_mask: str) -> str:
        """softmax(q k^T + mask) v from MatMul/Softmax; q arrives already scaled."""
        config, builder = self._config, self._builder
        split = builder.int64s("heads", [0, 0, config.num_heads, config.head_size])

        def heads(states: str, perm: list[int]) -> str:
            return builder.op("Transpose", builder.op("Reshape", states, split), perm=perm)

        scores = builder.op("MatMul", heads(query, [0, 2, 1, 3]), heads(key, [0, 2, 3, 1]))
        probs = builder.op("Softmax", builder.op("Add", scores, attention_mask), axis=-1)
        context = builder.op("MatMul", probs, heads(value, [0, 2, 1, 3]))
        context = builder.op("Transpose", context, perm=[0, 2, 1, 3])
        return builder.op("Reshape", context, builder.int64s("merge", [0, 0, -1]))

    def _mlp_inner(self, prefix: str, hidden: str) -> str:
        """The MLP up to fc2: fc11(x) * act(fc12(x)) when gated, else gelu(fc1(x))."""
        config, builder = self._config, self._builder
        shape = (config.intermediate_size, config.hidden_size)
        if not config.gated:
            weight = self._source.get(prefix + "fc1.weight", shape)
            bias = self._optional_bias(prefix + "fc1.bias", shape[0], config.fc1_bias)
            return self._gelu(prefix + "fc1", hidden, weight, bias)
        up = self._source.get(prefix + "fc11.weight", shape)
        up_bias = self._optional_bias(prefix + "fc11.bias", shape[0], config.fc1_bias)
        gate = self._source.get(prefix + "fc12.weight", shape)
        gate_bias = self._optional_bias(prefix + "fc12.bias", shape[0], config.fc1_bias)
        value = self._linear(hidden, prefix + "fc11", up, up_bias)
        if config.mlp == "geglu":
            activated = self._gelu(prefix + "fc12", hidden, gate, gate_bias)
        else:
            gate_out = self._linear(hidden, prefix + "fc12", gate, gate_bias)
            activated = self._sigmoid_gate(gate_out)
        return builder.op("Mul", value, activated)

    def _sigmoid_gate(self, gate: str) -> str:
        """silu(g) = g * sigmoid(g) for SwiGLU; sigmoid(g) for GLU."""
        builder = self._builder
        if self._config.mlp == "glu":
            return builder.op("Sigmoid", gate)
        if self._fused:
            # QuickGelu is x * sigmoid(alpha * x): with alpha 1 it is exactly SiLU, in one kernel.
            return builder.op("QuickGelu", gate, domain=MICROSOFT_DOMAIN, alpha=1.0)
        return builder.op("Mul", gate, builder.op("Sigmoid", gate))

    def _gelu(self, name: str, hidden: str, weight: FloatArray, bias: FloatArray | None) -> str:
        """gelu(x W^T + b), erf form."""
        builder = self._builder
        if not self._fused:
            return activation(builder, self._linear(hidden, name, weight, bias), "gelu")
        product = builder.op("MatMul", hidden, builder.initializer(name + ".weight", weight.T))
        if bias is None:
            return builder.op("Gelu", product, domain=MICROSOFT_DOMAIN)
        bias_name = builder.initializer(name + ".bias", bias)
        return builder.op("BiasGelu", product, bias_name, domain=MICROSOFT_DOMAIN)

    def _project_add_norm(
        self,
        states: str,
        weight: FloatArray,
        bias: FloatArray | None,
        residual: str,
        name: str,
        norm: str,
    ) -> str:
        """LayerNorm(states W^T + b + residual): out_proj then norm1, fc2 then norm2."""
        builder = self._builder
        if not self._fused:
            projected = self._linear(states, name, weight, bias)
            return self._layer_norm(builder.op("Add", projected, residual), norm)
        projected = builder.op("MatMul", states, builder.initializer(name + ".weight", weight.T))
        gamma, beta = self._norm_weights(norm)
        inputs = [projected, residual, gamma, beta]
        if bias is not None:
            inputs.append(builder.initializer(name + ".bias", bias))
        return builder.op(
            "SkipLayerNormalization",
            *inputs,
            domain=MICROSOFT_DOMAIN,
            epsilon=self._config.layer_norm_eps,
        )

    def _linear(self, states: str, name: str, weight: FloatArray, bias: FloatArray | None) -> str:
        """states @ weight^T (+ bias), weight as torch stores it: [out, in]."""
        builder = self._builder
        product = builder.op("MatMul", states, builder.initializer(name + ".weight", weight.T))
        if bias is None:
            return product
        return builder.op("Add", product, builder.initializer(name + ".bias", bias))

    def _optional_bias(self, name: str, size: int, present: bool) -> FloatArray | None:
        """A bias the config says the checkpoint has (qkv_proj_bias, mlp_fc1_bias, ...)."""
        return self._source.get(name, (size,)) if present else None

    def _sequence_length(self, input_ids: str) -> str:
        """[seq] as a 1-D int64, for Slice ends and Range."""
        builder = self._builder
        return builder.op(
            "Slice",
            builder.op("Shape", input_ids),
            builder.int64s("one", [1]),
            builder.int64s("two", [2]),
        )

    def _norm_weights(self, prefix: str) -> tuple[str, str]:
        size = (self._config.hidden_size,)
        builder = self._builder
        gamma = builder.initializer(prefix + ".weight", self._source.get(prefix + ".weight", size))
        beta = builder.initializer(prefix + ".bias", self._source.get(prefix + ".bias", size))
        return gamma, beta

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
