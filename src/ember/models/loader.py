"""Turns a registered model folder into a loaded model: tokenizer plus engine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ember.engines.base import Engine
from ember.errors import ModelLoadFailed
from ember.models.prompts import PromptIds
from ember.models.settings import ModelSettings
from ember.models.tokenizer import ModelTokenizer, TextTokenizer


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to embed: its settings, tokenizer and running engine."""

    settings: ModelSettings
    tokenizer: ModelTokenizer
    engine: Engine
    load_seconds: float
    folder: Path
    # Each prompt's token ids (None: the tokenizer cannot splice it), found on first use.
    prompt_ids: dict[str, PromptIds | None] = field(default_factory=dict, compare=False)


def load_model(folder: Path, settings: ModelSettings, *, reloading: bool = False) -> LoadedModel:
    """Load tokenizer and engine; blocking, so callers run it off the event loop.

    `reloading` marks a second attempt after the instance could not embed: engines then
    force embedding mode on.
    """
    started = time.perf_counter()
    if settings.engine == "gguf":
        tokenizer, engine = _start_gguf(folder, settings)
        return LoadedModel(settings, tokenizer, engine, time.perf_counter() - started, folder)
    if settings.tokenizer_file is None:
        raise ModelLoadFailed(f"{settings.id}: no tokenizer_file in model.json", settings.id)
    tokenizer_path = folder / settings.tokenizer_file
    if not tokenizer_path.is_file():
        raise ModelLoadFailed(f"{settings.id}: tokenizer file is missing", settings.id)
    try:
        tokenizer = TextTokenizer(tokenizer_path, settings.ctx_len)
        engine = _start_engine(folder, settings, reloading=reloading)
    except ModelLoadFailed as exc:
        if exc.model_id is not None:
            raise
        # Tokenizers and engines name the file that failed; say which model it belongs to.
        raise ModelLoadFailed(f"{settings.id}: {exc.message}", settings.id) from exc
    return LoadedModel(settings, tokenizer, engine, time.perf_counter() - started, folder)


def _start_engine(folder: Path, settings: ModelSettings, *, reloading: bool) -> Engine:
    if settings.engine == "fake":
        from ember.engines.fake import FakeEngine

        options = dict((settings.model_extra or {}).get("fake", {}))
        mode = options.get("embedding_mode", "on")
        options["embedding_mode"] = mode == "on" or (mode == "off_until_reload" and reloading)
        return FakeEngine(settings.dimensions, options)
    model_path = folder / settings.model_file
    if not model_path.is_file():
        raise ModelLoadFailed(
            f"{settings.id}: model file {settings.model_file} is missing", settings.id
        )
    if settings.engine == "onnx" and settings.runtime == "openvino":
        return _start_openvino(model_path, settings)
    if settings.engine == "onnx":
        from ember.engines.onnx import OnnxEngine

        return OnnxEngine(
            model_path,
            pooling=settings.pooling,
            normalize_output=settings.normalize,
            output_name=settings.onnx_output,
            gpu_layers=settings.ngl,
            lanes=settings.lanes,
        )
    raise ModelLoadFailed(f"{settings.id}: unknown engine {settings.engine}", settings.id)


def weight_copies(settings: ModelSettings) -> int:
    """Copies of the weights a loaded model may hold: an ONNX Runtime model with several lanes
    opens a second session for them when work piles up (see OnnxEngine)."""
    if settings.engine != "onnx" or settings.runtime != "onnxruntime":
        return 1
    from ember.engines.cores import available_cores
    from ember.engines.onnx import lane_count

    lanes = lane_count(available_cores(), settings.lanes, gpu_layers=settings.ngl)
    return 2 if lanes > 1 else 1


def _start_openvino(model_path: Path, settings: ModelSettings) -> Engine:
    """OpenVINO, as the model's settings ask; it refuses graphs it would not compute as ONNX
    Runtime does (see engines/openvino.py), and GPUs, lanes and int8 are ONNX Runtime's."""
    if settings.ngl or settings.lanes or settings.quantize:
        raise ModelLoadFailed(
            f"{settings.id}: runtime openvino runs float32 graphs on CPU; drop ngl, lanes and "
            "quantize from model.json, or use runtime onnxruntime",
            settings.id,
        )
    from ember.engines.openvino import OpenVinoEngine

    return OpenVinoEngine(
        model_path,
        pooling=settings.pooling,
        normalize_output=settings.normalize,
        output_name=settings.onnx_output,
    )


def _start_gguf(folder: Path, settings: ModelSettings) -> tuple[ModelTokenizer, Engine]:
    """GGUF models run on llama.cpp (an optional extra), which also tokenises."""
    from ember.engines.gguf import load_gguf

    model_path = folder / settings.model_file
    if not model_path.is_file():
        raise ModelLoadFailed(f"{settings.id}: model file {settings.model_file} is missing")
    return load_gguf(
        model_path,
        max_tokens=settings.ctx_len,
        batch_tokens=settings.ubatch_size,
        pooling=settings.pooling,
        normalize_output=settings.normalize,
        gpu_layers=settings.ngl,
    )
