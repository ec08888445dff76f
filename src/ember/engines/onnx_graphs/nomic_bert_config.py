"""Nomic-BERT's config.json read into what shapes its graph, and the model.json defaults it
decides (context, width, prompts, Matryoshka sizes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ember.nomic_prompts import NOMIC_PROMPTS

MlpKind = Literal["swiglu", "geglu", "glu", "gelu"]

# nomic-embed-text-v1.5's Matryoshka sizes below its 768 (v1 has none, but shares the config).
NOMIC_MATRYOSHKA_DIMENSIONS = {768: [512, 256, 128, 64]}

# Upstream's activation_function values: gated ones use fc11/fc12/fc2, the rest fc1/fc2. The
# block hands a non-gated MLP `F.gelu` itself, so every GELU spelling is the erf form there.
_MLP_KINDS: dict[str, MlpKind] = {
    "swiglu": "swiglu",
    "geglu": "geglu",
    "glu": "glu",
    "gelu": "gelu",
    "gelu_new": "gelu",
    "gelu_fast": "gelu",
    "gelu_pytorch_tanh": "gelu",
}
# The gated MLP rounds its width up to a multiple of this (NomciBertGatedMLP, multiple_of=256).
_GATED_WIDTH_MULTIPLE = 256


@dataclass(frozen=True)
class NomicBertConfig:
    """The parts of a `NomicBertConfig` (a GPT2Config: n_embd, n_head, ...) that shape the graph."""

    hidden_size: int
    num_heads: int
    num_layers: int
    intermediate_size: int
    mlp: MlpKind
    layer_norm_eps: float
    vocab_rows: int
    type_vocab_size: int
    max_positions: int
    rotary_dim: int
    rotary_base: float
    rotary_interleaved: bool
    rotary_scaling_factor: float | None
    max_trained_positions: int
    qkv_bias: bool
    fc1_bias: bool
    fc2_bias: bool

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def gated(self) -> bool:
        return self.mlp != "gelu"

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> NomicBertConfig:
        """Read a parsed config.json; ValueError names a missing or unsupported field.

        Defaults are NomicBertConfig's and GPT2Config's, so a config that leaves a key out means
        what it means upstream (biases on, no rotary, eps 1e-5).
        """
        _reject_unsupported(config)
        hidden = _positive_int(config, "n_embd", "hidden_size")
        heads = _positive_int(config, "n_head", "num_attention_heads")
        if hidden % heads:
            raise ValueError(f"n_embd {hidden} is not a multiple of n_head {heads}")
        kind = str(config.get("activation_function", "gelu_new"))
        if kind not in _MLP_KINDS:
            supported = ", ".join(sorted(_MLP_KINDS))
            raise ValueError(f"unsupported activation_function {kind!r} (supported: {supported})")
        mlp = _MLP_KINDS[kind]
        head_size = hidden // heads
        fraction = float(config.get("rotary_emb_fraction") or 0.0)
        rotary_dim = head_size * fraction
        if fraction < 0 or fraction > 1 or not rotary_dim.is_integer() or rotary_dim % 2:
            raise ValueError(
                f"rotary_emb_fraction {fraction} gives a rotary width of {rotary_dim} of "
                f"{head_size}; it must be a whole, even number"
            )
        multiple = int(config.get("pad_vocab_size_multiple") or 1)
        vocab = _positive_int(config, "vocab_size")
        scaling = config.get("rotary_scaling_factor")
        return cls(
            hidden_size=hidden,
            num_heads=heads,
            num_layers=_positive_int(config, "n_layer", "num_hidden_layers"),
            intermediate_size=_intermediate_size(config, hidden, gated=mlp != "gelu"),
            mlp=mlp,
            layer_norm_eps=float(_first(config, "layer_norm_epsilon", "layer_norm_eps") or 1e-5),
            vocab_rows=-(-vocab // multiple) * multiple,
            type_vocab_size=int(config.get("type_vocab_size", 2)),
            max_positions=_positive_int(config, "n_positions", "max_position_embeddings"),
            rotary_dim=int(rotary_dim),
            rotary_base=float(_first(config, "rotary_emb_base") or 10_000.0),
            rotary_interleaved=bool(config.get("rotary_emb_interleaved", False)),
            rotary_scaling_factor=float(scaling) if scaling else None,
            max_trained_positions=int(config.get("max_trained_positions") or 2048),
            qkv_bias=bool(config.get("qkv_proj_bias", True)),
            fc1_bias=bool(config.get("mlp_fc1_bias", True)),
            fc2_bias=bool(config.get("mlp_fc2_bias", True)),
        )


def _reject_unsupported(config: Mapping[str, Any]) -> None:
    """Variants the upstream class can express but no nomic-embed-text checkpoint uses."""
    if config.get("prenorm"):
        raise ValueError("prenorm Nomic-BERT checkpoints are not supported (post-norm only)")
    if config.get("parallel_block"):
        raise ValueError("parallel_block Nomic-BERT checkpoints are not supported")
    if config.get("moe_every_n_layers") or config.get("num_experts"):
        raise ValueError(
            "mixture-of-experts Nomic-BERT checkpoints (nomic-embed-text-v2-moe) are not supported"
        )
    if config.get("rotary_emb_scale_base") is not None:
        raise ValueError("rotary_emb_scale_base (xPos scaling) is not supported")
    if config.get("rotary_head_dim"):
        raise ValueError("rotary_head_dim is not supported")
    if config.get("norm_mlp"):
        raise ValueError("norm_mlp is not supported")
    heads_kv = config.get("num_heads_kv")
    if heads_kv is not None and heads_kv != _first(config, "n_head", "num_attention_heads"):
        raise ValueError("num_heads_kv (grouped-query attention) is not supported")


def _intermediate_size(config: Mapping[str, Any], hidden: int, *, gated: bool) -> int:
    """The MLP width the weights have: n_inner, rounded up to 256 by the gated MLP."""
    inner = _first(config, "n_inner", "intermediate_size")
    if inner is None:
        inner = int(8 * hidden / 3) if gated else 4 * hidden
    if not isinstance(inner, int) or isinstance(inner, bool) or inner <= 0:
        raise ValueError(f"config field 'n_inner' must be a positive integer, got {inner!r}")
    if not gated:
        return inner
    return -(-inner // _GATED_WIDTH_MULTIPLE) * _GATED_WIDTH_MULTIPLE


def _first(config: Mapping[str, Any], *keys: str) -> Any:
    """The first of `keys` that is set: GPT-2 names first, then their BERT-style aliases."""
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return None


def _positive_int(config: Mapping[str, Any], *keys: str) -> int:
    value = _first(config, *keys)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"config field {keys[0]!r} must be a positive integer, got {value!r}")
    return value


def default_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """model.json defaults for a nomic_bert folder, where config.json alone decides them.

    The full context (n_positions, 8192 for nomic-embed-text), the hidden size as the vector
    length, the four task prefixes, and v1.5's Matryoshka sizes when the width is 768.
    """
    parsed = NomicBertConfig.from_mapping(config)
    settings: dict[str, Any] = {
        "ctx_len": parsed.max_positions,
        "dimensions": parsed.hidden_size,
        "prompts": dict(NOMIC_PROMPTS),
        # v1.5's modules.json has no Normalize module; its model card normalises, as do
        # llama.cpp and OpenAI clients' expectations, so Ember serves unit vectors.
        "normalize": True,
    }
    sizes = NOMIC_MATRYOSHKA_DIMENSIONS.get(parsed.hidden_size)
    if sizes:
        settings["matryoshka_dimensions"] = list(sizes)
    # Nomic's Matryoshka recipe layer-normalises the full vector before slicing it.
    settings["matryoshka_layer_norm"] = True
    return settings
