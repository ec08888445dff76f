"""A plain numpy BERT forward pass and sentence-transformers pooling, to check built graphs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

_erf = np.vectorize(math.erf, otypes=[np.float64])


def bert_sentence_embeddings(
    config: Mapping[str, Any],
    weights: Mapping[str, npt.NDArray[Any]],
    input_ids: npt.NDArray[np.int64],
    attention_mask: npt.NDArray[np.int64],
    *,
    pooling: str,
    normalize: bool,
) -> Array:
    """Sentence vectors [batch, hidden] in float64, computed the way the papers write it."""
    hidden = bert_last_hidden_state(config, weights, input_ids, attention_mask)
    pooled = pool(hidden, attention_mask, pooling)
    return l2_normalize(pooled) if normalize else pooled


def bert_last_hidden_state(
    config: Mapping[str, Any],
    weights: Mapping[str, npt.NDArray[Any]],
    input_ids: npt.NDArray[np.int64],
    attention_mask: npt.NDArray[np.int64],
) -> Array:
    """BertModel's last_hidden_state [batch, seq, hidden], token_type_ids all 0."""
    params = strip_prefix(weights, ("bert.",), encoder_only=True)
    eps = float(config["layer_norm_eps"])
    seq_len = input_ids.shape[1]
    words = params["embeddings.word_embeddings.weight"][input_ids]
    token_types = params["embeddings.token_type_embeddings.weight"][0]
    positions = params["embeddings.position_embeddings.weight"][:seq_len]
    hidden = layer_norm(words + token_types + positions, params, "embeddings.LayerNorm", eps)
    for index in range(int(config["num_hidden_layers"])):
        hidden = encoder_layer(config, params, f"encoder.layer.{index}.", hidden, attention_mask)
    return hidden


def encoder_layer(
    config: Mapping[str, Any],
    params: Mapping[str, Array],
    prefix: str,
    hidden: Array,
    attention_mask: npt.NDArray[np.int64],
) -> Array:
    """One post-norm transformer layer: attention, add & norm, feed-forward, add & norm."""
    eps = float(config["layer_norm_eps"])
    attended = self_attention(config, params, prefix + "attention.self.", hidden, attention_mask)
    attended = linear(attended, params, prefix + "attention.output.dense")
    hidden = layer_norm(attended + hidden, params, prefix + "attention.output.LayerNorm", eps)
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
) -> Array:
    """softmax(Q K^T / sqrt(d) + mask) V per head, heads concatenated."""
    batch, seq_len, width = hidden.shape
    heads = int(config["num_attention_heads"])
    head_size = width // heads

    def split_heads(states: Array) -> Array:
        return states.reshape(batch, seq_len, heads, head_size).transpose(0, 2, 1, 3)

    query = split_heads(linear(hidden, params, prefix + "query"))
    key = split_heads(linear(hidden, params, prefix + "key"))
    value = split_heads(linear(hidden, params, prefix + "value"))
    context = attend(query, key, value, padding_bias(attention_mask))
    return context.transpose(0, 2, 1, 3).reshape(batch, seq_len, width)


def padding_bias(attention_mask: npt.NDArray[np.int64]) -> Array:
    """Hugging Face adds the most negative float to the scores of padded keys."""
    bias: Array = (1.0 - attention_mask[:, None, None, :]) * np.finfo(np.float64).min
    return bias


def attend(query: Array, key: Array, value: Array, score_bias: Array | float = 0.0) -> Array:
    """softmax(q k^T / sqrt(d) + score_bias) v over the last two axes ([..., seq, head])."""
    scores = query @ np.swapaxes(key, -1, -2) / math.sqrt(query.shape[-1]) + score_bias
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs = probs / probs.sum(axis=-1, keepdims=True)
    context: Array = probs @ value
    return context


def linear(states: Array, params: Mapping[str, Array], name: str) -> Array:
    """torch.nn.Linear: weight is [out, in]; the bias may be absent (nomic's qkv and fc)."""
    product: Array = states @ params[name + ".weight"].T
    bias = params.get(name + ".bias")
    return product if bias is None else product + bias


def layer_norm(states: Array, params: Mapping[str, Array], name: str, eps: float) -> Array:
    mean: Array = states.mean(axis=-1, keepdims=True)
    variance: Array = ((states - mean) ** 2).mean(axis=-1, keepdims=True)
    normed = (states - mean) / np.sqrt(variance + eps)
    return normed * params[name + ".weight"] + params[name + ".bias"]


def activation(states: Array, name: str) -> Array:
    if name == "gelu":
        erf: Array = _erf(states / math.sqrt(2.0))
        return 0.5 * states * (1.0 + erf)
    if name in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
        inner = math.sqrt(2.0 / math.pi) * (states + 0.044715 * states**3)
        return 0.5 * states * (1.0 + np.tanh(inner))
    if name == "relu":
        return np.maximum(states, 0.0)
    raise ValueError(f"unknown activation {name!r}")


def pool(hidden: Array, attention_mask: npt.NDArray[np.int64], pooling: str) -> Array:
    """sentence-transformers' Pooling: mean over real tokens, first token, or last real token."""
    if pooling == "mean":
        mask = attention_mask[:, :, None].astype(np.float64)
        summed: Array = (hidden * mask).sum(axis=1)
        counts: Array = mask.sum(axis=1)
        return summed / np.maximum(counts, 1e-9)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "lasttoken":
        rows = []
        for row, mask_row in enumerate(attention_mask):
            real = np.flatnonzero(mask_row)
            rows.append(hidden[row, real[-1] if len(real) else 0])
        return np.stack(rows)
    raise ValueError(f"unknown pooling {pooling!r}")


def l2_normalize(vectors: Array) -> Array:
    """torch.nn.functional.normalize: x / max(||x||, 1e-12)."""
    norms: Array = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def strip_prefix(
    weights: Mapping[str, npt.NDArray[Any]], prefixes: tuple[str, ...], *, encoder_only: bool
) -> dict[str, Array]:
    """Canonical names (wrapper prefixes removed), in float64; with `encoder_only`, buffers,
    the pooler and heads are dropped."""
    params = {}
    for name, tensor in weights.items():
        canonical = name
        for prefix in prefixes:
            canonical = canonical.removeprefix(prefix)
        if encoder_only and not (
            canonical.startswith(("embeddings", "encoder")) and not canonical.endswith("_ids")
        ):
            continue
        params[canonical] = np.asarray(tensor, dtype=np.float64)
    return params
