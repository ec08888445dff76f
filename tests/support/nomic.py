"""Tiny nomic-embed-text folders, laid out file for file as the Hugging Face download."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models

from tests.support.models import write_tiny_tokenizer

NOMIC_PROMPTS = {
    "search_query": "search_query: ",
    "search_document": "search_document: ",
    "clustering": "clustering: ",
    "classification": "classification: ",
}
# The task prefixes' words, so each prefix tokenises to its own ids rather than to [UNK]s.
_PREFIX_WORDS = ["search", "_", "query", "document", "clustering", "classification", ":"]
# The tiny model's stand-ins for v1.5's Matryoshka sizes 512/256/128/64 of 768.
TINY_MATRYOSHKA_DIMENSIONS = [16, 8]


@dataclass(frozen=True)
class TinyNomicFolder:
    """What a test needs besides the files: the parsed config, the weights, the overrides."""

    path: Path
    config: dict[str, Any]
    weights: dict[str, npt.NDArray[np.float32]]
    matryoshka_dimensions: list[int]


def tiny_nomic_config(**changes: Any) -> dict[str, Any]:
    """nomic-embed-text-v1.5's config.json, every key kept, sizes shrunk (hidden 32, 2 layers).

    n_inner is a multiple of 256 because the upstream gated MLP rounds its width up to one.
    """
    config: dict[str, Any] = {
        "_name_or_path": "nomic-ai/nomic-bert-2048",
        "activation_function": "swiglu",
        "architectures": ["NomicBertModel"],
        "attn_pdrop": 0.0,
        "auto_map": {
            "AutoConfig": "nomic-ai/nomic-bert-2048--configuration_hf_nomic_bert.NomicBertConfig",
            "AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertModel",
            "AutoModelForMaskedLM": (
                "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertForPreTraining"
            ),
        },
        "bos_token_id": None,
        "causal": False,
        "dense_seq_output": True,
        "embd_pdrop": 0.0,
        "eos_token_id": None,
        "fused_bias_fc": True,
        "fused_dropout_add_ln": True,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-12,
        "max_trained_positions": 2048,
        "mlp_fc1_bias": False,
        "mlp_fc2_bias": False,
        "model_type": "nomic_bert",
        "n_embd": 32,
        "n_head": 4,
        "n_inner": 256,
        "n_layer": 2,
        "n_positions": 8192,
        "pad_token_id": 0,
        "pad_vocab_size_multiple": 64,
        "parallel_block": False,
        "parallel_block_tied_norm": False,
        "prenorm": False,
        "qkv_proj_bias": False,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.0,
        "rotary_emb_base": 1000,
        "rotary_emb_fraction": 1.0,
        "rotary_emb_interleaved": False,
        "rotary_emb_scale_base": None,
        "rotary_scaling_factor": None,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "summary_activation": None,
        "summary_first_dropout": 0.0,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "torch_dtype": "float32",
        "transformers_version": "4.37.2",
        "type_vocab_size": 2,
        "use_cache": True,
        "use_flash_attn": True,
        "use_rms_norm": False,
        "use_xentropy": True,
        "vocab_size": 64,
    }
    config.update(changes)
    return config


def tiny_nomic_weights(
    config: dict[str, Any], *, seed: int, prefix: str = ""
) -> dict[str, npt.NDArray[np.float32]]:
    """Random tensors under the names NomicBertModel's state dict gives them.

    Scales are large enough that attention is far from uniform and rotary positions matter.
    """
    rng = np.random.default_rng(seed)
    hidden, inner = int(config["n_embd"]), int(config["n_inner"])
    gated = config["activation_function"] in ("swiglu", "geglu", "glu")
    if gated:
        inner = -(-inner // 256) * 256
    multiple = int(config.get("pad_vocab_size_multiple", 1))
    vocab = -(-int(config["vocab_size"]) // multiple) * multiple

    def normal(*shape: int, scale: float) -> npt.NDArray[np.float32]:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(name: str) -> None:
        weights[f"{name}.weight"] = (1.0 + normal(hidden, scale=0.1)).astype(np.float32)
        weights[f"{name}.bias"] = normal(hidden, scale=0.1)

    weights: dict[str, npt.NDArray[np.float32]] = {
        "embeddings.word_embeddings.weight": normal(vocab, hidden, scale=1.0),
        "embeddings.token_type_embeddings.weight": normal(
            int(config["type_vocab_size"]), hidden, scale=0.5
        ),
    }
    if float(config["rotary_emb_fraction"]) <= 0:
        weights["embeddings.position_embeddings.weight"] = normal(
            int(config["n_positions"]), hidden, scale=0.5
        )
    norm("emb_ln")
    for index in range(int(config["n_layer"])):
        layer = f"encoder.layers.{index}."
        weights[layer + "attn.Wqkv.weight"] = normal(3 * hidden, hidden, scale=0.5)
        weights[layer + "attn.out_proj.weight"] = normal(hidden, hidden, scale=hidden**-0.5)
        if config["qkv_proj_bias"]:
            weights[layer + "attn.Wqkv.bias"] = normal(3 * hidden, scale=0.2)
            weights[layer + "attn.out_proj.bias"] = normal(hidden, scale=0.2)
        first = ["fc11", "fc12"] if gated else ["fc1"]
        for name in first:
            weights[f"{layer}mlp.{name}.weight"] = normal(inner, hidden, scale=hidden**-0.5)
            if config["mlp_fc1_bias"]:
                weights[f"{layer}mlp.{name}.bias"] = normal(inner, scale=0.2)
        weights[layer + "mlp.fc2.weight"] = normal(hidden, inner, scale=inner**-0.5)
        if config["mlp_fc2_bias"]:
            weights[layer + "mlp.fc2.bias"] = normal(hidden, scale=0.2)
        norm(layer + "norm1")
        norm(layer + "norm2")
    return {prefix + name: tensor for name, tensor in weights.items()}


def write_tiny_nomic_folder(
    path: Path,
    *,
    seed: int,
    matryoshka: bool,
    st_prompts: bool = True,
    config_changes: dict[str, Any] | None = None,
) -> TinyNomicFolder:
    """A complete nomic-embed-text folder: config, safetensors, tokenizer, sentence-transformers.

    `matryoshka` picks v1.5 (trained for shorter vectors; the returned `matryoshka_dimensions`
    are its tiny stand-ins, for registration overrides) or v1 (none). `st_prompts` writes the
    four task prefixes into config_sentence_transformers.json; without it the file carries only
    its version block, and the prompts must come from elsewhere.
    """
    path.mkdir(parents=True, exist_ok=True)
    config = tiny_nomic_config(**(config_changes or {}))
    weights = tiny_nomic_weights(config, seed=seed)
    _write_json(path / "config.json", config)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    _write_tokenizer(path / "tokenizer.json")
    _write_json(
        path / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ],
    )
    _write_json(
        path / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": int(config["n_embd"]),
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    _write_json(
        path / "sentence_bert_config.json", {"max_seq_length": 8192, "do_lower_case": False}
    )
    st_config: dict[str, Any] = {
        "__version__": {
            "sentence_transformers": "2.4.0.dev0",
            "transformers": "4.37.2",
            "pytorch": "2.1.0+cu121",
        }
    }
    if st_prompts:
        st_config.update(prompts=dict(NOMIC_PROMPTS), default_prompt_name=None)
    _write_json(path / "config_sentence_transformers.json", st_config)
    dimensions = list(TINY_MATRYOSHKA_DIMENSIONS) if matryoshka else []
    return TinyNomicFolder(path, config, weights, dimensions)


def _write_tokenizer(path: Path) -> None:
    """The suite's tiny BERT WordPiece tokenizer, its vocabulary grown by the prefix words."""
    write_tiny_tokenizer(path)
    tokenizer = Tokenizer.from_file(str(path))
    vocab = tokenizer.get_vocab()
    for word in _PREFIX_WORDS:
        vocab.setdefault(word, len(vocab))
    tokenizer.model = models.WordPiece(vocab, unk_token="[UNK]")
    tokenizer.save(str(path))


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
