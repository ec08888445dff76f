"""Tiny GGUF models, converted from tiny Hugging Face folders as convert_hf_to_gguf.py does.

`convert_folder` is a small port of llama.cpp's converter for the two embedding architectures
Jan ships (BertModel -> "bert", NomicBertModel -> "nomic-bert"): the same metadata keys, the
tensor names from gguf-py's own name map, the phantom-space WordPiece vocabulary, and F32
(or F16 for matrices) tensors. Weights come from the folder's safetensors, so vectors can be
checked against the numpy reference forward passes of the HF layout.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer, models

from tests.support.models import write_tiny_tokenizer

# WordPiece pieces beyond the suite's tiny word list: suffixes and punctuation, so that
# tokenisation by llama.cpp and by Hugging Face can be compared on more than whole words.
EXTRA_PIECES = ["##s", "##ing", "##ed", ".", ",", "!", "?", "[MASK]"]

_POOLING_TYPES = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS}
_CONTROL = re.compile(r"^\[[A-Z]+\]$")


@dataclass(frozen=True)
class TinyBertFolder:
    """A tiny sentence-transformers BERT folder and what a test compares against."""

    path: Path
    config: dict[str, Any]
    weights: dict[str, npt.NDArray[np.float32]]


def tiny_bert_config(**changes: Any) -> dict[str, Any]:
    """A BertModel config.json shrunk to hidden 32, 2 layers, 4 heads, 64 positions."""
    config: dict[str, Any] = {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 64,
        "model_type": "bert",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "transformers_version": "4.44.0",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": 0,  # set from the tokenizer
    }
    config.update(changes)
    return config


def write_tiny_bert_folder(
    path: Path, *, seed: int, pooling: str = "mean", normalize: bool = True
) -> TinyBertFolder:
    """config.json, model.safetensors, tokenizer files and sentence-transformers modules."""
    path.mkdir(parents=True, exist_ok=True)
    vocab_size = write_wordpiece_tokenizer(path / "tokenizer.json")
    config = tiny_bert_config(vocab_size=vocab_size)
    weights = tiny_bert_weights(config, seed=seed)
    _write_json(path / "config.json", config)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    _write_json(
        path / "tokenizer_config.json",
        {
            "cls_token": "[CLS]",
            "do_lower_case": True,
            "mask_token": "[MASK]",
            "model_max_length": 64,
            "pad_token": "[PAD]",
            "sep_token": "[SEP]",
            "tokenizer_class": "BertTokenizer",
            "unk_token": "[UNK]",
        },
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    _write_json(path / "modules.json", modules)
    _write_json(
        path / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": config["hidden_size"],
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    _write_json(path / "sentence_bert_config.json", {"max_seq_length": 64, "do_lower_case": False})
    return TinyBertFolder(path, config, weights)


def write_wordpiece_tokenizer(path: Path) -> int:
    """The suite's tiny BERT tokenizer plus EXTRA_PIECES; returns the vocabulary size."""
    write_tiny_tokenizer(path)
    tokenizer = Tokenizer.from_file(str(path))
    vocab = tokenizer.get_vocab()
    for piece in EXTRA_PIECES:
        vocab.setdefault(piece, len(vocab))
    tokenizer.model = models.WordPiece(vocab, unk_token="[UNK]")
    tokenizer.save(str(path))
    return len(vocab)


def tiny_bert_weights(config: dict[str, Any], *, seed: int) -> dict[str, npt.NDArray[np.float32]]:
    """Random BertModel tensors, scaled so attention is far from uniform."""
    rng = np.random.default_rng(seed)
    hidden, inner = int(config["hidden_size"]), int(config["intermediate_size"])

    def normal(*shape: int, scale: float) -> npt.NDArray[np.float32]:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    weights = {
        "embeddings.word_embeddings.weight": normal(int(config["vocab_size"]), hidden, scale=1.0),
        "embeddings.position_embeddings.weight": normal(
            int(config["max_position_embeddings"]), hidden, scale=0.5
        ),
        "embeddings.token_type_embeddings.weight": normal(
            int(config["type_vocab_size"]), hidden, scale=0.5
        ),
    }

    def linear(name: str, outputs: int, inputs: int, scale: float) -> None:
        weights[f"{name}.weight"] = normal(outputs, inputs, scale=scale)
        weights[f"{name}.bias"] = normal(outputs, scale=0.1)

    def norm(name: str) -> None:
        weights[f"{name}.weight"] = (1.0 + normal(hidden, scale=0.1)).astype(np.float32)
        weights[f"{name}.bias"] = normal(hidden, scale=0.1)

    norm("embeddings.LayerNorm")
    for index in range(int(config["num_hidden_layers"])):
        layer = f"encoder.layer.{index}."
        for name in ("query", "key", "value"):
            linear(f"{layer}attention.self.{name}", hidden, hidden, 0.5)
        linear(f"{layer}attention.output.dense", hidden, hidden, hidden**-0.5)
        norm(f"{layer}attention.output.LayerNorm")
        linear(f"{layer}intermediate.dense", inner, hidden, hidden**-0.5)
        linear(f"{layer}output.dense", hidden, inner, inner**-0.5)
        norm(f"{layer}output.LayerNorm")
    return weights


# --- the converter ---------------------------------------------------------------------------


def convert_folder(
    folder: Path, target: Path, *, half: bool = False, name: str | None = None
) -> Path:
    """Write `folder` (BertModel or NomicBertModel) as a GGUF file, as the converter lays it out.

    `half` stores matrices as F16 (the converter's default outtype); norms, biases, position
    and token-type tables stay F32, as there.
    """
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model_type = config["model_type"]
    if model_type == "bert":
        arch = gguf.MODEL_ARCH.BERT
        blocks = int(config["num_hidden_layers"])
    elif model_type == "nomic_bert":
        arch = gguf.MODEL_ARCH.NOMIC_BERT
        blocks = int(config["n_layer"])
    else:
        raise ValueError(f"cannot convert {model_type}")
    weights = load_file(str(folder / "model.safetensors"))
    writer = gguf.GGUFWriter(str(target), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or folder.name)
    _write_hparams(writer, config, blocks)
    pooling = _folder_pooling(folder)
    if pooling is not None:
        writer.add_pooling_type(_POOLING_TYPES[pooling])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if half else gguf.LlamaFileType.ALL_F32)
    rows = weights["embeddings.word_embeddings.weight"].shape[0]
    _write_vocab(writer, folder, config, rows)
    _write_tensors(writer, arch, blocks, weights, half=half)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def _write_hparams(writer: gguf.GGUFWriter, config: dict[str, Any], blocks: int) -> None:
    """TextModel.set_gguf_parameters plus BertModel's and NomicBertModel's additions."""
    writer.add_block_count(blocks)
    if config["model_type"] == "bert":
        writer.add_context_length(int(config["max_position_embeddings"]))
        writer.add_embedding_length(int(config["hidden_size"]))
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_head_count(int(config["num_attention_heads"]))
        writer.add_layer_norm_eps(float(config["layer_norm_eps"]))
    else:
        positions, trained = int(config["n_positions"]), int(config["max_trained_positions"])
        # nomic-embed-text v1 and v1.5 are trained for 2048 tokens: the converter says so.
        writer.add_context_length(2048 if (positions, trained) == (8192, 2048) else positions)
        writer.add_embedding_length(int(config["n_embd"]))
        writer.add_feed_forward_length(int(config["n_inner"]))
        writer.add_head_count(int(config["n_head"]))
        writer.add_rope_freq_base(float(config["rotary_emb_base"]))
        writer.add_layer_norm_eps(float(config["layer_norm_epsilon"]))
    writer.add_causal_attention(False)


def _write_vocab(writer: gguf.GGUFWriter, folder: Path, config: dict[str, Any], rows: int) -> None:
    """BertModel.set_vocab: WordPiece tokens in phantom-space form, ids padded to the table."""
    vocab: dict[str, int] = json.loads((folder / "tokenizer.json").read_text("utf-8"))["model"][
        "vocab"
    ]
    by_id = {token_id: token for token, token_id in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for token_id in range(rows):
        token = by_id.get(token_id)
        if token is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
        elif _CONTROL.match(token):
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(token[2:] if token.startswith("##") else "\u2581" + token)
            types.append(gguf.TokenType.NORMAL)
    writer.add_token_type_count(int(config.get("type_vocab_size", 1)))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("jina-v2-en")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # gguf.SpecialVocab on a BERT tokenizer: bos/eos fall back to cls/sep, and the
    # "[CLS] $A [SEP]" template sets add_bos and add_eos ("[SEP] $B [SEP]" sets add_sep).
    ids = {token: vocab[token] for token in ("[CLS]", "[SEP]", "[UNK]", "[PAD]")}
    writer.add_bos_token_id(ids["[CLS]"])
    writer.add_eos_token_id(ids["[SEP]"])
    writer.add_unk_token_id(ids["[UNK]"])
    writer.add_sep_token_id(ids["[SEP]"])
    writer.add_pad_token_id(ids["[PAD]"])
    if "[MASK]" in vocab:
        writer.add_mask_token_id(vocab["[MASK]"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_add_sep_token(True)


def _write_tensors(
    writer: gguf.GGUFWriter,
    arch: gguf.MODEL_ARCH,
    blocks: int,
    weights: dict[str, npt.NDArray[Any]],
    *,
    half: bool,
) -> None:
    names = gguf.get_tensor_name_map(arch, blocks)
    keep_f32 = {
        gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD],
        gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_TYPES],
    }
    for hf_name, tensor in weights.items():
        if hf_name.endswith(("position_ids", "pooler.dense.weight", "pooler.dense.bias")):
            continue
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        data = np.ascontiguousarray(tensor, dtype=np.float32)
        matrix = data.ndim > 1 and not new_name.endswith("_norm.weight")
        if half and matrix and new_name.removesuffix(".weight") not in keep_f32:
            data = data.astype(np.float16)
        writer.add_tensor(new_name, data)


def _folder_pooling(folder: Path) -> str | None:
    """TextModel._try_set_pooling_type: the sentence-transformers Pooling module's mode."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return None
    for module in json.loads(modules_path.read_text(encoding="utf-8")):
        if module["type"].endswith("Pooling"):
            pooling_path = folder / module["path"] / "config.json"
            mode = json.loads(pooling_path.read_text(encoding="utf-8"))
            if mode.get("pooling_mode_mean_tokens"):
                return "mean"
            if mode.get("pooling_mode_cls_token"):
                return "cls"
            raise ValueError("only mean and CLS pooling are converted here")
    return None


# --- other files ---------------------------------------------------------------------------


def write_chat_gguf(path: Path, *, name: str = "tiny-chat", context: int = 4096) -> Path:
    """The header of a small decoder (a Llama chat model) with one tensor; never run."""
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(1)
    writer.add_context_length(context)
    writer.add_embedding_length(16)
    writer.add_feed_forward_length(32)
    writer.add_head_count(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>", "\u2581hi"])
    writer.add_token_types([2, 3, 3, 1])
    writer.add_tensor("token_embd.weight", np.zeros((4, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_jan_model(
    data_folder: Path, model_id: str, gguf_source: Path, *, embedding: bool, **extra: Any
) -> Path:
    """A model as Jan's llama.cpp extension imports one: llamacpp/models/<id>/model.yml.

    `model_path` is relative to Jan's data folder, as Jan writes it for files it downloads.
    """
    folder = data_folder / "llamacpp" / "models" / model_id
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "model.gguf"
    weights.write_bytes(gguf_source.read_bytes())
    settings = {
        "model_path": f"llamacpp/models/{model_id}/model.gguf",
        "name": model_id,
        "size_bytes": weights.stat().st_size,
        "embedding": embedding,
        **extra,
    }
    lines = [f"{key}: {json.dumps(value)}" for key, value in settings.items()]
    (folder / "model.yml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
