"""A plain numpy NomicBertModel forward pass (nomic-embed-text), to check built graphs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from tests.reference_forward.bert import (
    Array,
    activation,
    attend,
    l2_normalize,
    layer_norm,
    linear,
    strip_prefix,
)

# Prefixes the tensors carry in checkpoints saved from the wrapper classes.
_PREFIXES = ("bert.", "model.")


def nomic_sentence_embeddings(
    config: Mapping[str, Any],
    weights: Mapping[str, npt.NDArray[Any]],
    input_ids: npt.NDArray[np.int64],
    attention_mask: npt.NDArray[np.int64],
    *,
    pooling: str,
    normalize: bool,
) -> Array:
    """Sentence vectors [batch, hidden] in float64.

    Every row is run on its own, without padding, as upstream runs a batch of one; padded
    batches of the graph must agree with this. Rows must be right-padded.
    """
    params = strip_prefix(weights, _PREFIXES, encoder_only=False)
    vectors = []
    for ids, mask in zip(input_ids, attention_mask, strict=True):
        length = int(mask.sum())
        assert np.all(mask[:length] == 1), "rows must be right-padded"
        assert np.all(mask[length:] == 0), "rows must be right-padded"
        states = nomic_last_hidden_state(config, params, ids[:length])
        if pooling == "mean":
            vectors.append(states.mean(axis=0))
        elif pooling == "cls":
            vectors.append(states[0])
        elif pooling == "lasttoken":
            vectors.append(states[-1])
        else:
            raise ValueError(f"unknown pooling {pooling!r}")
    pooled = np.stack(vectors)
    return l2_normalize(pooled) if normalize else pooled


def nomic_last_hidden_state(
    config: Mapping[str, Any], params: Mapping[str, Array], input_ids: npt.NDArray[np.int64]
) -> Array:
    """NomicBertModel's last_hidden_state [seq, hidden] for one unpadded sequence."""
    eps = float(_field(config, "layer_norm_epsilon", "layer_norm_eps", default=1e-5))
    seq_len = len(input_ids)
    # NomicBertEmbeddings: word + token_type[0] (+ learned positions only without rotary).
    hidden = params["embeddings.word_embeddings.weight"][input_ids]
    if int(config.get("type_vocab_size", 2)) > 0:
        hidden = hidden + params["embeddings.token_type_embeddings.weight"][0]
    if float(config.get("rotary_emb_fraction", 0.0)) <= 0:
        hidden = hidden + params["embeddings.position_embeddings.weight"][:seq_len]
    hidden = layer_norm(hidden, params, "emb_ln", eps)
    for index in range(int(_field(config, "n_layer", "num_hidden_layers"))):
        prefix = f"encoder.layers.{index}."
        attended = attention(config, params, prefix + "attn.", hidden)
        if config.get("prenorm", False):
            raise NotImplementedError("prenorm checkpoints are not covered by this reference")
        # Post-norm block: norm1(attn(h) + h), then norm2(mlp(h) + h).
        hidden = layer_norm(attended + hidden, params, prefix + "norm1", eps)
        hidden = layer_norm(
            mlp(config, params, prefix + "mlp.", hidden) + hidden, params, prefix + "norm2", eps
        )
    return hidden


def attention(
    config: Mapping[str, Any], params: Mapping[str, Array], prefix: str, hidden: Array
) -> Array:
    """NomicBertAttention: fused Wqkv, rotary on q and k, softmax(q k^T / sqrt(d)) v, out_proj."""
    seq_len, width = hidden.shape
    heads = int(_field(config, "n_head", "num_attention_heads"))
    head_dim = width // heads
    qkv = linear(hidden, params, prefix + "Wqkv")
    # "... (three h d) -> ... three h d": q, k, v blocks, each head-major.
    qkv = qkv.reshape(seq_len, 3, heads, head_dim)
    query, key, value = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # [seq, heads, head_dim]
    rotary_dim = int(head_dim * float(config.get("rotary_emb_fraction", 0.0)))
    if rotary_dim > 0:
        cos, sin = rotary_tables(config, rotary_dim, seq_len)
        interleaved = bool(config.get("rotary_emb_interleaved", False))
        query = apply_rotary(query, cos, sin, interleaved)
        key = apply_rotary(key, cos, sin, interleaved)
    heads_first = (1, 0, 2)  # [heads, seq, head_dim]
    context = attend(*(part.transpose(heads_first) for part in (query, key, value)))
    merged = context.transpose(heads_first).reshape(seq_len, width)
    return linear(merged, params, prefix + "out_proj")


def rotary_tables(config: Mapping[str, Any], dim: int, seq_len: int) -> tuple[Array, Array]:
    """cos and sin [seq, dim / 2] of NomicBertRotaryEmbedding (or its dynamic-NTK variant).

    With `rotary_scaling_factor`, a sequence longer than `max_trained_positions` gets a larger
    base: base * (factor * len / trained - (factor - 1)) ** (dim / (dim - 2)).
    """
    base = float(config.get("rotary_emb_base", 10_000))
    factor = config.get("rotary_scaling_factor")
    trained = int(config.get("max_trained_positions", 2048))
    if factor and seq_len > trained:
        base = base * (factor * seq_len / trained - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = np.outer(np.arange(seq_len, dtype=np.float64), inv_freq)
    return np.cos(angles), np.sin(angles)


def apply_rotary(states: Array, cos: Array, sin: Array, interleaved: bool) -> Array:
    """x * cos + rotate_half(x) * sin on the first `2 * cos.shape[1]` dims of each head."""
    rotary_dim = 2 * cos.shape[1]
    rotated, passed = states[..., :rotary_dim], states[..., rotary_dim:]
    if interleaved:
        # GPT-J style: pairs (x0, x1), (x2, x3), ...; cos repeated "(d 2)".
        cos_full = np.repeat(cos, 2, axis=-1)[:, None, :]
        sin_full = np.repeat(sin, 2, axis=-1)[:, None, :]
        evens, odds = rotated[..., ::2], rotated[..., 1::2]
        turned = np.stack([-odds, evens], axis=-1).reshape(rotated.shape)
    else:
        # GPT-NeoX style: halves (x1, x2) -> (-x2, x1); cos repeated "(2 d)".
        cos_full = np.concatenate([cos, cos], axis=-1)[:, None, :]
        sin_full = np.concatenate([sin, sin], axis=-1)[:, None, :]
        first, second = np.split(rotated, 2, axis=-1)
        turned = np.concatenate([-second, first], axis=-1)
    return np.concatenate([rotated * cos_full + turned * sin_full, passed], axis=-1)


def mlp(
    config: Mapping[str, Any], params: Mapping[str, Array], prefix: str, hidden: Array
) -> Array:
    """NomciBertGatedMLP (fc2(fc11(x) * act(fc12(x)))) or NomicBertMLP (fc2(gelu(fc1(x))))."""
    kind = str(config.get("activation_function", "gelu"))
    if kind in ("swiglu", "geglu", "glu"):
        value = linear(hidden, params, prefix + "fc11")
        gate = linear(hidden, params, prefix + "fc12")
        if kind == "swiglu":
            gated = gate / (1.0 + np.exp(-gate))  # silu
        elif kind == "glu":
            gated = 1.0 / (1.0 + np.exp(-gate))  # F.glu: value * sigmoid(gate)
        else:
            gated = activation(gate, "gelu")
        return linear(value * gated, params, prefix + "fc2")
    # The block hands the MLP F.gelu itself, so every non-gated variant is the erf form.
    inner = activation(linear(hidden, params, prefix + "fc1"), "gelu")
    return linear(inner, params, prefix + "fc2")


def _field(config: Mapping[str, Any], name: str, alias: str, default: Any = None) -> Any:
    """GPT-2 style keys (n_embd, ...) as NomicBertConfig saves them, or their BERT names."""
    value = config.get(name, config.get(alias, default))
    if value is None:
        raise KeyError(name)
    return value
