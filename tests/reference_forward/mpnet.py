"""A plain numpy MPNet forward pass, written from Hugging Face's modeling_mpnet, to check graphs."""

from __future__ import annotations

import math
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
    padding_bias,
    pool,
    strip_prefix,
)

PAD_ID = 1  # MPNetEmbeddings.padding_idx: <pad>, and the position that padding gets


def mpnet_sentence_embeddings(
    config: Mapping[str, Any],
    weights: Mapping[str, npt.NDArray[Any]],
    input_ids: npt.NDArray[np.int64],
    attention_mask: npt.NDArray[np.int64],
    *,
    pooling: str,
    normalize: bool,
) -> Array:
    """Sentence vectors [batch, hidden] in float64; `input_ids` must pad with PAD_ID, as HF's do."""
    hidden = mpnet_last_hidden_state(config, weights, input_ids, attention_mask)
    pooled = pool(hidden, attention_mask, pooling)
    return l2_normalize(pooled) if normalize else pooled


def mpnet_last_hidden_state(
    config: Mapping[str, Any],
    weights: Mapping[str, npt.NDArray[Any]],
    input_ids: npt.NDArray[np.int64],
    attention_mask: npt.NDArray[np.int64],
) -> Array:
    """MPNetModel's last_hidden_state [batch, seq, hidden]."""
    params = strip_prefix(weights, ("mpnet.",), encoder_only=True)
    eps = float(config["layer_norm_eps"])
    # create_position_ids_from_input_ids: real tokens count up from PAD_ID + 1, padding gets PAD_ID.
    not_pad = (input_ids != PAD_ID).astype(np.int64)
    position_ids = np.cumsum(not_pad, axis=1) * not_pad + PAD_ID
    words = params["embeddings.word_embeddings.weight"][input_ids]
    positions = params["embeddings.position_embeddings.weight"][position_ids]
    hidden = layer_norm(words + positions, params, "embeddings.LayerNorm", eps)
    seq_len = input_ids.shape[1]
    # compute_position_bias: one [heads, seq, seq] table for every layer and every row.
    relative = np.arange(seq_len)[None, :] - np.arange(seq_len)[:, None]  # key - query
    buckets = relative_position_bucket(relative)
    position_bias = params["encoder.relative_attention_bias.weight"][buckets].transpose(2, 0, 1)
    for index in range(int(config["num_hidden_layers"])):
        prefix = f"encoder.layer.{index}."
        hidden = encoder_layer(config, params, prefix, hidden, attention_mask, position_bias)
    return hidden


def relative_position_bucket(
    relative_position: npt.NDArray[np.int64], num_buckets: int = 32, max_distance: int = 128
) -> npt.NDArray[np.int64]:
    """MPNetEncoder.relative_position_bucket, line for line (in float64 rather than float32)."""
    n = -relative_position
    num_buckets //= 2
    ret = (n < 0).astype(np.int64) * num_buckets
    n = np.abs(n)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    safe_n = np.maximum(n, 1)  # log(0) only happens where is_small picks n itself
    val_if_large = max_exact + (
        np.log(safe_n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).astype(np.int64)
    val_if_large = np.minimum(val_if_large, num_buckets - 1)
    result: npt.NDArray[np.int64] = ret + np.where(is_small, n, val_if_large)
    return result


def encoder_layer(
    config: Mapping[str, Any],
    params: Mapping[str, Array],
    prefix: str,
    hidden: Array,
    attention_mask: npt.NDArray[np.int64],
    position_bias: Array,
) -> Array:
    """MPNetLayer: attention with the shared bias, add & norm, feed-forward, add & norm."""
    eps = float(config["layer_norm_eps"])
    attended = self_attention(
        config, params, prefix + "attention.attn.", hidden, attention_mask, position_bias
    )
    hidden = layer_norm(attended + hidden, params, prefix + "attention.LayerNorm", eps)
    inner = linear(hidden, params, prefix + "intermediate.dense")
    inner = activation(inner, str(config.get("hidden_act", "gelu")))
    output = linear(inner, params, prefix + "output.dense")
    return layer_norm(output + hidden, params, prefix + "output.LayerNorm", eps)


def self_attention(
    config: Mapping[str, Any],
    params: Mapping[str, Array],
    prefix: str,
    hidden: Array,
    attention_mask: npt.NDArray[np.int64],
    position_bias: Array,
) -> Array:
    """o(softmax(q k^T / sqrt(d) + position_bias + mask) v), per head, heads concatenated."""
    batch, seq_len, width = hidden.shape
    heads = int(config["num_attention_heads"])
    head_size = width // heads

    def split_heads(states: Array) -> Array:
        return states.reshape(batch, seq_len, heads, head_size).transpose(0, 2, 1, 3)

    query = split_heads(linear(hidden, params, prefix + "q"))
    key = split_heads(linear(hidden, params, prefix + "k"))
    value = split_heads(linear(hidden, params, prefix + "v"))
    context = attend(query, key, value, position_bias[None] + padding_bias(attention_mask))
    merged = context.transpose(0, 2, 1, 3).reshape(batch, seq_len, width)
    return linear(merged, params, prefix + "o")
