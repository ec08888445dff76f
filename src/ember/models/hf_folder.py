"""Registers a Hugging Face / sentence-transformers folder: settings from its own files,
and an ONNX graph built once from config.json and the safetensors weights."""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ember.errors import InvalidModelSettings
from ember.models.graph_files import save_graph
from ember.models.settings import ModelSettings, parse_settings, write_settings
from ember.pooling import Pooling

log = logging.getLogger(__name__)

GRAPH_FILE = "model.onnx"
INT8_GRAPH_FILE = "model.int8.onnx"
GraphBuilder = Callable[..., Any]


def is_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def register_hf_folder(
    folder: Path, model_id: str, overrides: Mapping[str, Any] | None = None
) -> ModelSettings:
    """Write `model.onnx` and `model.json` into `folder`, which holds the model's files.

    Settings come, in rising precedence, from the sentence-transformers files, the
    architecture's own defaults (e.g. Nomic's prompts and 8192-token context), the folder's
    prompts, and `overrides`; the graph is then built from the final settings.
    """
    config = _read_json(folder / "config.json")
    architecture = architecture_of(config, folder)
    pooling, normalize = _pooling(folder)
    raw: dict[str, Any] = {
        "id": model_id,
        "engine": "onnx",
        "embedding": True,
        "model_file": GRAPH_FILE,
        "tokenizer_file": "tokenizer.json",
        "ctx_len": _max_tokens(folder, config),
        "pooling": pooling,
        "normalize": normalize,
        "dimensions": config.get("hidden_size"),
        **architecture.default_settings(config),
        **_prompts(folder),
        **(overrides or {}),
    }
    settings = parse_settings(raw, model_id)
    if not (folder / "tokenizer.json").is_file():
        raise InvalidModelSettings(f"{model_id}: the folder has no tokenizer.json", model_id)
    weights = _load_weights(folder)
    build = architecture.build
    graph = build(config, weights, pooling=settings.pooling, normalize=settings.normalize)
    save_graph(graph, folder / GRAPH_FILE)
    if settings.quantize == "int8":
        if architecture.int8_build_options:  # built otherwise for int8: same vectors
            graph = build(
                config,
                weights,
                pooling=settings.pooling,
                normalize=settings.normalize,
                **architecture.int8_build_options,
            )
        settings = _add_int8_graph(folder, graph, settings)
    write_settings(folder, settings)
    return settings


def _add_int8_graph(folder: Path, graph: Any, settings: ModelSettings) -> ModelSettings:
    """Quantise the fp32 graph beside it, measure it on held-out text, and serve it instead."""
    from ember.engines.onnx_graphs.quantize import (
        CALIBRATION_TEXTS,
        FIDELITY_TEXTS,
        measure_fidelity,
        quantize_int8,
    )
    from ember.models.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(folder / "tokenizer.json", settings.ctx_len)
    int8 = quantize_int8(graph, tokenizer.encode_truncated(CALIBRATION_TEXTS))
    fidelity = measure_fidelity(graph, int8, tokenizer.encode_truncated(FIDELITY_TEXTS))
    save_graph(int8, folder / INT8_GRAPH_FILE)
    log.info("%s: int8 min cosine %.5f to fp32", settings.id, fidelity.min_cosine)
    return settings.model_copy(
        update={"model_file": INT8_GRAPH_FILE, "int8_min_cosine": round(fidelity.min_cosine, 5)}
    )


# config.json `model_type` -> the module building its graph (imported only when used) and
# the builder function in it; a module may also offer `default_settings(config)`.
ARCHITECTURES: dict[str, str] = {
    "bert": "build_bert_graph",
    "mpnet": "build_mpnet_graph",
    "nomic_bert": "build_nomic_bert_graph",
}


@dataclass(frozen=True)
class Architecture:
    """What a graph module (ember.engines.onnx_graphs.<model_type>) offers."""

    build: GraphBuilder
    default_settings: Callable[[Mapping[str, Any]], dict[str, Any]]
    int8_build_options: Mapping[str, Any]  # how to build the graph that int8 starts from


def architecture_of(config: Mapping[str, Any], folder: Path) -> Architecture:
    """The folder's architecture: its builder function (named in ARCHITECTURES), and the
    module's `default_settings(config)` and `INT8_BUILD_OPTIONS` where it has them."""
    model_type = str(config.get("model_type", "")).lower()
    if model_type not in ARCHITECTURES:
        raise InvalidModelSettings(
            f"{folder.name}: architecture '{model_type or 'unknown'}' is not supported "
            f"(supported: {', '.join(sorted(ARCHITECTURES))})",
            folder.name,
        )
    module = importlib.import_module(f"ember.engines.onnx_graphs.{model_type}")
    return Architecture(
        build=getattr(module, ARCHITECTURES[model_type]),
        default_settings=getattr(module, "default_settings", _no_defaults),
        int8_build_options=getattr(module, "INT8_BUILD_OPTIONS", {}),
    )


def _no_defaults(_config: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _pooling(folder: Path) -> tuple[Pooling, bool]:
    """Pooling mode and normalisation as the sentence-transformers modules say (mean if none)."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return "mean", True
    modules = _read_json(modules_path)
    pooling: Pooling = "mean"
    normalize = False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            pooling = _pooling_mode(folder / str(module.get("path", "")) / "config.json")
        elif kind.endswith("Normalize"):
            normalize = True
    return pooling, normalize


def _pooling_mode(config_path: Path) -> Pooling:
    config = _read_json(config_path) if config_path.is_file() else {}
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_lasttoken"):
        return "lasttoken"
    return "mean"


def _max_tokens(folder: Path, config: Mapping[str, Any]) -> int:
    """sentence-transformers' max_seq_length, else the position table's size."""
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        limit = _read_json(st_config).get("max_seq_length")
        if isinstance(limit, int) and limit > 0:
            return limit
    return int(config.get("max_position_embeddings", 512))


def _prompts(folder: Path) -> dict[str, Any]:
    path = folder / "config_sentence_transformers.json"
    if not path.is_file():
        return {}
    config = _read_json(path)
    prompts = {str(name): str(text) for name, text in (config.get("prompts") or {}).items()}
    found: dict[str, Any] = {"prompts": prompts} if prompts else {}
    default = config.get("default_prompt_name")
    if default and default in prompts:
        found["default_prompt"] = default
    return found


def _load_weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    weights: dict[str, np.ndarray] = {}
    for path in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(str(path)))
    return weights


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidModelSettings(f"cannot read {path.name}: {exc}", path.parent.name) from exc
