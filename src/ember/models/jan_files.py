"""What Jan's model.yml files say: the GGUF file they name, the model's id in Jan, and the
settings that mean something to Ember."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ember.errors import InvalidModelSettings

JAN_SETTINGS = "model.yml"


def read_jan_settings(yml_path: Path) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load(yml_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidModelSettings(f"cannot read {yml_path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise InvalidModelSettings(f"{yml_path} is not a mapping of settings")
    return loaded


def jan_overrides(jan: Mapping[str, Any], yml_path: Path) -> dict[str, Any]:
    """Jan's keys that mean something here: embedding, ctx_len (0 = the model's), ngl (< 0:
    llama.cpp's choice, so Ember's default)."""
    found: dict[str, Any] = {}
    if isinstance(jan.get("embedding"), bool):
        found["embedding"] = jan["embedding"]
    ctx_len = _whole_number(jan, "ctx_len", yml_path)
    if ctx_len is not None and ctx_len > 0:
        found["ctx_len"] = ctx_len
    ngl = _whole_number(jan, "ngl", yml_path)
    if ngl is not None and ngl >= 0:
        found["ngl"] = ngl
    if isinstance(jan.get("name"), str):
        found["name"] = jan["name"]
    return found


def _whole_number(jan: Mapping[str, Any], key: str, yml_path: Path) -> int | None:
    """`key` as an integer: 8192.0 is 8192 (as a JSON or YAML round trip may write it); 8.5,
    true or "8192" are refused by name, where they were silently dropped for the default."""
    value = jan.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    shown = json.dumps(value, default=str)  # as the file would say it: true, "8192"
    raise InvalidModelSettings(f"{yml_path}: {key} should be a whole number, not {shown}")


def jan_weights(yml_path: Path, jan: Mapping[str, Any]) -> Path:
    """The GGUF file a model.yml names.

    Jan writes `model_path` relative to its data folder (or absolute, for files imported in
    place); Cortex-era files list `files`. Relative paths are tried against each folder
    above the model.yml, so the data folder's location need not be known.
    """
    files = jan.get("files") or []
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list):
        shown = json.dumps(files, default=str)
        raise InvalidModelSettings(f"{yml_path}: files should be a list of paths, not {shown}")
    named = [jan.get("model_path"), *files]
    for name in (str(item) for item in named if item):
        candidate = Path(name.removeprefix("file://")).expanduser()
        if candidate.is_absolute():
            if candidate.is_file():
                return candidate
            continue
        for base in (yml_path.parent, *yml_path.parent.parents):
            if (base / candidate).is_file():
                return base / candidate
    local = sorted(path for path in yml_path.parent.glob("*.gguf") if "mmproj" not in path.name)
    if len(local) == 1:
        return local[0]
    raise InvalidModelSettings(f"{yml_path}: cannot find the model's .gguf file")


def jan_id(yml_path: Path, jan: Mapping[str, Any]) -> str:
    """Jan's own model id, so clients keep the name they used with Jan.

    Cortex-era files say it in `model`; Jan's llama.cpp extension names a model by its
    folder under `llamacpp/models/` (such ids may contain slashes).
    """
    if isinstance(jan.get("model"), str) and jan["model"]:
        return str(jan["model"])
    parts = yml_path.parent.parts
    if "models" in parts:
        last = len(parts) - 1 - parts[::-1].index("models")
        relative = "/".join(parts[last + 1 :])
        if relative:
            return relative
    return yml_path.parent.name
