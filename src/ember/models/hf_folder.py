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

from ember.errors import InvalidModelSettings, ModelLoadFailed
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
    config = _read_json_object(folder, "config.json")
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
    _check_tokenizer(folder, settings)
    weights = _load_weights(folder)
    graph = _build(architecture, config, weights, settings)
    save_graph(graph, folder / GRAPH_FILE)
    if settings.quantize == "int8":
        if architecture.int8_build_options:  # built otherwise for int8: same vectors
            graph = _build(architecture, config, weights, settings, architecture.int8_build_options)
        settings = _add_int8_graph(folder, graph, settings)
    write_settings(folder, settings)
    return settings


def _check_tokenizer(folder: Path, settings: ModelSettings) -> None:
    """Refuse a folder whose tokenizer.json is missing or unreadable now: registered, such a
    model answered every request with 503."""
    from ember.models.tokenizer import TextTokenizer

    if not (folder / "tokenizer.json").is_file():
        raise InvalidModelSettings(f"{settings.id}: the folder has no tokenizer.json", settings.id)
    try:
        TextTokenizer(folder / "tokenizer.json", settings.ctx_len)
    except ModelLoadFailed as exc:
        raise InvalidModelSettings(f"{settings.id}: {exc.message}", settings.id) from exc


def _build(
    architecture: Architecture,
    config: Mapping[str, Any],
    weights: Mapping[str, np.ndarray],
    settings: ModelSettings,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """The graph; config.json and weights that do not fit together are a user's error (the
    builders say which tensor or field, in a ValueError), not a traceback."""
    try:
        return architecture.build(
            config, weights, pooling=settings.pooling, normalize=settings.normalize,
            **(options or {}),
        )  # fmt: skip
    except (KeyError, ValueError) as exc:
        raise InvalidModelSettings(
            f"{settings.id}: cannot build the ONNX graph from config.json and the weights: {exc}",
            settings.id,
        ) from exc


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
    if not (folder / "modules.json").is_file():
        return "mean", True
    modules = _read_json(folder, "modules.json")
    if not isinstance(modules, list) or not all(isinstance(item, dict) for item in modules):
        raise InvalidModelSettings(
            "modules.json should be a list of modules ({...} objects)", folder.name
        )
    pooling: Pooling = "mean"
    normalize = False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            pooling = _pooling_mode(folder, f"{module.get('path') or '.'}/config.json")
        elif kind.endswith("Normalize"):
            normalize = True
    return pooling, normalize


def _pooling_mode(folder: Path, name: str) -> Pooling:
    config = _read_json_object(folder, name) if (folder / name).is_file() else {}
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_lasttoken"):
        return "lasttoken"
    return "mean"


def _max_tokens(folder: Path, config: Mapping[str, Any]) -> int:
    """sentence-transformers' max_seq_length, else the position table's size."""
    if (folder / "sentence_bert_config.json").is_file():
        limit = _read_json_object(folder, "sentence_bert_config.json").get("max_seq_length")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            return limit
    positions = config.get("max_position_embeddings", 512)
    if isinstance(positions, float) and positions.is_integer():
        positions = int(positions)
    if not isinstance(positions, int) or isinstance(positions, bool) or positions < 1:
        raise InvalidModelSettings(
            "config.json: max_position_embeddings should be a positive whole "
            f"number, not {json.dumps(positions)}",
            folder.name,
        )
    return positions


def _prompts(folder: Path) -> dict[str, Any]:
    name = "config_sentence_transformers.json"
    if not (folder / name).is_file():
        return {}
    config = _read_json_object(folder, name)
    given = config.get("prompts") or {}
    if not isinstance(given, dict) or not all(isinstance(text, str) for text in given.values()):
        raise InvalidModelSettings(
            f"{name}: prompts should be an object of prompt names to texts", folder.name
        )
    prompts = {str(name): text for name, text in given.items()}
    found: dict[str, Any] = {"prompts": prompts} if prompts else {}
    default = config.get("default_prompt_name")
    if isinstance(default, str) and default in prompts:
        found["default_prompt"] = default
    return found


def _load_weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    weights: dict[str, np.ndarray] = {}
    for path in sorted(folder.glob("*.safetensors")):
        try:
            weights.update(load_file(str(path)))
        except (OSError, SafetensorError) as exc:
            raise InvalidModelSettings(
                f"{path.name} is not a readable safetensors file: {exc}", folder.name
            ) from exc
    return weights


def _read_json(folder: Path, name: str) -> Any:
    """`folder/name` parsed; errors name the file as the folder's, not the staging copy's path."""
    try:  # utf-8-sig: Windows editors may start the file with a byte-order mark
        return json.loads((folder / name).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelSettings(f"cannot read {name}: {exc}", folder.name) from exc


def _read_json_object(folder: Path, name: str) -> dict[str, Any]:
    """A JSON file that must hold an object (config.json and its kin)."""
    loaded = _read_json(folder, name)
    if not isinstance(loaded, dict):
        shown = json.dumps(loaded)
        raise InvalidModelSettings(
            f"{name} should hold a JSON object {{...}}, not {shown[:40]}", folder.name
        )
    return loaded
