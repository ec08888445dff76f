"""`ember models add`: registers model files already on disk, by what they are.

A GGUF file, a Jan model folder (`model.yml` beside a `.gguf`), a whole Jan data folder, a
Hugging Face / sentence-transformers folder, or an ONNX file with its tokenizer. Each becomes
a folder `models_dir/<id>/` holding the weights (hard-linked when the disk allows, else
copied) and a `model.json`. Folders are assembled under a hidden staging name and renamed
into place last, so a failed or interrupted import never leaves a half-registered model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ember.errors import EmberError, InvalidModelSettings
from ember.models.gguf_header import read_gguf_metadata
from ember.models.hf_folder import is_hf_folder, register_hf_folder
from ember.models.jan_files import (
    JAN_SETTINGS,
    jan_id,
    jan_overrides,
    jan_weights,
    read_jan_settings,
)
from ember.models.onnx_probe import external_data_files, probe_graph
from ember.models.settings import SETTINGS_FILE, ModelSettings, parse_settings, write_settings
from ember.models.staging import add_staging
from ember.nomic_prompts import NOMIC_PROMPTS
from ember.pooling import Pooling

Report = Callable[[str], None]

TOKENIZER_FILE = "tokenizer.json"

# GGUF `<arch>.pooling_type` values (llama.cpp's enum llama_pooling_type) Ember can serve.
GGUF_POOLING: dict[int, Pooling] = {1: "mean", 2: "cls", 3: "lasttoken"}
# Encoder architectures llama.cpp runs as embedding models (Jan checks bert and nomic-bert).
GGUF_ENCODERS = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "modern-bert"}
)
# llama.cpp sizes one batch to ctx_len (encoders need a whole input in one batch), and its
# memory grows with the square of that; decoders trained on 32k+ tokens start at this.
GGUF_CTX_CAP = 8192


@dataclass(frozen=True)
class AddOptions:
    """What the user said on the command line; None leaves the choice to the files."""

    model_id: str | None = None
    tokenizer: Path | None = None
    pooling: Pooling | None = None
    normalize: bool | None = None
    ctx_len: int | None = None
    quantize: Literal["int8"] | None = None


def add_model(
    path: Path,
    models_dir: Path,
    options: AddOptions | None = None,
    report: Report = lambda _message: None,
) -> list[ModelSettings]:
    """Register what `path` holds; returns the settings of every model registered."""
    options = options or AddOptions()
    path = path.expanduser()
    if not path.exists():
        raise InvalidModelSettings(f"{path} does not exist")
    if options.quantize is not None and not (path.is_dir() and is_hf_folder(path)):
        raise InvalidModelSettings(
            "--quantize applies to Hugging Face folders, whose graphs Ember builds; "
            "ONNX and GGUF files run as they are"
        )
    if path.is_file() and path.suffix.lower() == ".gguf":
        return [add_gguf_file(path, models_dir, options)]
    if path.is_file() and path.suffix.lower() == ".onnx":
        return [add_onnx_file(path, models_dir, options)]
    if path.is_dir() and (path / JAN_SETTINGS).is_file():
        return [add_jan_model(path / JAN_SETTINGS, models_dir, options)]
    if path.is_dir() and is_hf_folder(path):
        return [add_hf_folder(path, models_dir, options, report)]
    if path.is_dir():
        found = sorted(path.rglob(JAN_SETTINGS))
        if found:
            return add_jan_data_folder(found, models_dir, options, report)
    raise InvalidModelSettings(
        f"{path.name}: not a model Ember can add (a .gguf or .onnx file, a Jan model or data "
        "folder, or a Hugging Face folder with config.json and safetensors weights)"
    )


# --- GGUF files and Jan folders -------------------------------------------------------------


def add_gguf_file(
    gguf_path: Path,
    models_dir: Path,
    options: AddOptions,
    *,
    model_id: str | None = None,
    jan_settings: Mapping[str, Any] | None = None,
) -> ModelSettings:
    """Settings from the file's own metadata; Jan's model.yml and the options win over it."""
    model_id = options.model_id or model_id or _safe_id(gguf_path.stem)
    metadata = read_gguf_metadata(gguf_path)
    architecture = str(metadata.get("general.architecture", ""))
    pooling_code = _pooling_code(metadata, f"{architecture}.pooling_type", gguf_path)
    embedding = architecture in GGUF_ENCODERS or pooling_code in GGUF_POOLING
    raw: dict[str, Any] = {
        "id": model_id,
        "engine": "gguf",
        "embedding": embedding,
        "model_file": gguf_path.name,
        "tokenizer_file": None,
        "ctx_len": min(
            _positive_int(metadata, f"{architecture}.context_length", gguf_path), GGUF_CTX_CAP
        ),
        "pooling": GGUF_POOLING.get(pooling_code or 1, "mean"),
        "normalize": True,
        "dimensions": _positive_int(metadata, f"{architecture}.embedding_length", gguf_path),
        "architecture": architecture,
    }
    if architecture.startswith("nomic-bert"):
        raw["prompts"] = dict(NOMIC_PROMPTS)
    raw.update(jan_settings or {})
    raw.update(_option_overrides(options))
    settings = parse_settings(raw, model_id)
    with _staged_folder(models_dir, settings.id) as staging:
        _link_or_copy(gguf_path, staging / gguf_path.name)
        write_settings(staging, settings)
    return settings


def add_jan_model(yml_path: Path, models_dir: Path, options: AddOptions) -> ModelSettings:
    """One Jan model: its model.yml names the GGUF file and says whether it embeds."""
    jan = read_jan_settings(yml_path)
    gguf_path = jan_weights(yml_path, jan)
    overrides = jan_overrides(jan, yml_path)
    model_id = jan_id(yml_path, jan)
    return add_gguf_file(gguf_path, models_dir, options, model_id=model_id, jan_settings=overrides)


def add_jan_data_folder(
    yml_paths: list[Path], models_dir: Path, options: AddOptions, report: Report
) -> list[ModelSettings]:
    """Every model of a Jan data folder; chat models keep `"embedding": false`."""
    if options.model_id is not None:
        raise InvalidModelSettings("--id names one model; a Jan data folder holds several")
    added: list[ModelSettings] = []
    for yml_path in yml_paths:
        try:
            settings = add_jan_model(yml_path, models_dir, options)
        except EmberError as exc:
            report(f"skipped {yml_path.parent}: {exc.message}")
            continue
        kind = "embedding" if settings.embedding else "not embedding"
        report(f"added {settings.id} ({kind})")
        added.append(settings)
    if not added:
        raise InvalidModelSettings("no model of the Jan data folder could be added")
    return added


# --- Hugging Face folders and ONNX files ----------------------------------------------------


def add_hf_folder(
    folder: Path, models_dir: Path, options: AddOptions, report: Report
) -> ModelSettings:
    """Copy the folder in (hard links where possible), then build its ONNX graph."""
    if options.pooling is not None or options.normalize is not None:
        raise InvalidModelSettings(
            "--pooling and --no-normalize apply to ONNX and GGUF files; a Hugging Face folder "
            "says how to pool in its modules.json"
        )
    model_id = options.model_id or _safe_id(folder.name)
    overrides: dict[str, Any] = {"ctx_len": options.ctx_len} if options.ctx_len else {}
    if options.quantize is not None:
        overrides["quantize"] = options.quantize
    with _staged_folder(models_dir, model_id) as staging:
        shutil.copytree(folder, staging, dirs_exist_ok=True, copy_function=_link_or_copy)
        (staging / SETTINGS_FILE).unlink(missing_ok=True)
        report(f"building the ONNX graph of {model_id}…")
        return register_hf_folder(staging, model_id, overrides)


def add_onnx_file(onnx_path: Path, models_dir: Path, options: AddOptions) -> ModelSettings:
    """An ONNX graph plus its tokenizer; the vector width is found by running it once."""
    if options.tokenizer is None:
        raise InvalidModelSettings(
            f"{onnx_path.name}: an ONNX file needs its tokenizer: --tokenizer tokenizer.json "
            "(or a folder holding it, or a BERT vocab.txt)"
        )
    model_id = options.model_id or _safe_id(onnx_path.stem)
    with _staged_folder(models_dir, model_id) as staging:
        _link_or_copy(onnx_path, staging / onnx_path.name)
        for location in external_data_files(onnx_path):
            (staging / location).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(onnx_path.parent / location, staging / location)
        tokenizer_source = _place_tokenizer(options.tokenizer, staging / TOKENIZER_FILE)
        raw: dict[str, Any] = {
            "id": model_id,
            "engine": "onnx",
            "model_file": onnx_path.name,
            "tokenizer_file": TOKENIZER_FILE,
            "ctx_len": options.ctx_len or _tokenizer_limit(tokenizer_source) or 512,
            "pooling": options.pooling or "mean",
            "normalize": True if options.normalize is None else options.normalize,
            "dimensions": 1,
        }
        probe = parse_settings(raw, model_id)
        width, ctx_len = probe_graph(
            staging, probe, TOKENIZER_FILE, ctx_len_given=options.ctx_len is not None
        )
        settings = parse_settings({**raw, "dimensions": width, "ctx_len": ctx_len}, model_id)
        write_settings(staging, settings)
    return settings


def _place_tokenizer(given: Path, target: Path) -> Path:
    """Copy tokenizer.json in, or build one from a BERT vocab.txt; returns the source file."""
    source = given / TOKENIZER_FILE if given.is_dir() else given
    if source.is_file() and source.name.endswith(".json"):
        shutil.copy2(source, target)
        return source
    vocab = given / "vocab.txt" if given.is_dir() else given
    if vocab.is_file() and vocab.suffix == ".txt":
        from tokenizers import BertWordPieceTokenizer

        BertWordPieceTokenizer(str(vocab), lowercase=True).save(str(target))
        return vocab
    raise InvalidModelSettings(f"{given}: no tokenizer.json or vocab.txt there")


def _tokenizer_limit(source: Path) -> int | None:
    """The length the tokenizer files say the model takes, if they say it: first
    sentence-transformers' max_seq_length, which it applies over the tokenizer's own
    truncation (all-MiniLM-L6-v2: 256, its tokenizer.json 128), as folder imports do."""
    truncation = _read_json(source).get("truncation") if source.suffix == ".json" else None
    candidates: list[tuple[dict[str, Any], str]] = [
        (_read_json(source.parent / "sentence_bert_config.json"), "max_seq_length"),
        (truncation if isinstance(truncation, dict) else {}, "max_length"),
        (_read_json(source.parent / "tokenizer_config.json"), "model_max_length"),
    ]
    for found, key in candidates:
        value = found.get(key)
        if isinstance(value, int) and 0 < value <= 1_000_000:
            return value
    return None


def _pooling_code(metadata: Mapping[str, Any], key: str, path: Path) -> int | None:
    """llama.cpp's pooling type, None when the header has none; any other value (a hand-made
    or damaged header) is refused here rather than failing deep inside the add."""
    value = metadata.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise InvalidModelSettings(f"{path.name}: the GGUF header's {key} is not an integer")
    return value


def _positive_int(metadata: Mapping[str, Any], key: str, path: Path) -> int:
    value = metadata.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidModelSettings(f"{path.name}: the GGUF header has no {key}")
    return value


# --- Shared ---------------------------------------------------------------------------------


def _option_overrides(options: AddOptions) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if options.pooling is not None:
        found["pooling"] = options.pooling
    if options.normalize is not None:
        found["normalize"] = options.normalize
    if options.ctx_len is not None:
        found["ctx_len"] = options.ctx_len
    return found


def folder_name(model_id: str) -> str:
    """The folder of a model id: ids may hold slashes (Jan's do), folders may not."""
    return model_id.replace("/", "--")


# The longest file name Linux, macOS and Windows file systems take, in bytes.
_NAME_MAX = 255


def _safe_id(name: str) -> str:
    cleaned = re.sub(r"[^\w.-]+", "-", name).strip("-.")  # letters of any script kept
    return cleaned or "model"


@contextmanager
def _staged_folder(models_dir: Path, model_id: str) -> Iterator[Path]:
    """A hidden folder that becomes `models_dir/<folder>` only when the block succeeds.

    File system failures (the models folder is a file or read-only, a full disk, a name too
    long) become errors that say what could not be added.
    """
    _check_id(model_id)
    name = folder_name(model_id)
    if name.startswith("."):  # the registry skips hidden folders, staging ones among them
        raise InvalidModelSettings(
            f"the model id '{model_id}' would make a hidden folder; choose an id that does "
            "not start with '.'",
            model_id,
        )
    if len(name.encode()) > _NAME_MAX:  # fail now, not after building the graph
        raise InvalidModelSettings(
            f"the model id '{model_id[:40]}…' is too long for a folder name "
            f"(at most {_NAME_MAX} bytes)",
            model_id,
        )
    target = models_dir / name
    if os.path.lexists(target):
        raise _already_registered(model_id, target)
    try:
        staging = add_staging(models_dir, name)
    except OSError as exc:
        raise InvalidModelSettings(f"cannot add '{model_id}' to {models_dir}: {exc}") from exc
    try:
        yield staging
        os.rename(staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and os.path.lexists(target):
            raise _already_registered(model_id, target) from exc  # another add won the race
        if isinstance(exc, OSError):
            raise InvalidModelSettings(f"cannot add '{model_id}': {exc}", model_id) from exc
        raise


def _check_id(model_id: str) -> None:
    """Refuse ids a client could not tell apart or a listing could not show on one line."""
    if any(unicodedata.category(char) == "Cc" for char in model_id):
        raise InvalidModelSettings(
            f"the model id {model_id!r} holds a control character (a newline, a tab…); "
            "choose one without",
            model_id,
        )
    if model_id != model_id.strip():
        raise InvalidModelSettings(
            f"the model id {model_id!r} starts or ends with a space; choose one without",
            model_id,
        )


def _already_registered(model_id: str, target: Path) -> InvalidModelSettings:
    return InvalidModelSettings(
        f"a model '{model_id}' is already registered at {target}; "
        "remove it first or choose another --id",
        model_id,
    )


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    """Hard-link large weights instead of copying them; copy across file systems.

    A symlink is followed first: Linux's link() links the symlink itself, whatever os.link's
    follow_symlinks says (before Python 3.13), and a relative one (a Hugging Face cache
    snapshot's `model.safetensors -> ../../blobs/…`) then dangles in the model folder.
    """
    real = os.path.realpath(source)
    try:
        os.link(real, target)
    except OSError:
        shutil.copy2(real, target)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
