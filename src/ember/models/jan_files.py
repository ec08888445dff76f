"""What Jan's model.yml files say: the GGUF file they name, the model's id in Jan, and the
settings that mean something to Ember."""

from __future__ import annotations

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


def jan_overrides(jan: Mapping[str, Any]) -> dict[str, Any]:
    """Jan's keys that mean something here: embedding, ctx_len (0 = the model's), ngl."""
    found: dict[str, Any] = {}
    if isinstance(jan.get("embedding"), bool):
        found["embedding"] = jan["embedding"]
    ctx_len = jan.get("ctx_len")
    if isinstance(ctx_len, int) and ctx_len > 0:
        found["ctx_len"] = ctx_len
    ngl = jan.get("ngl")
    if isinstance(ngl, int) and ngl >= 0:
        found["ngl"] = ngl
    if isinstance(jan.get("name"), str):
        found["name"] = jan["name"]
    return found


def jan_weights(yml_path: Path, jan: Mapping[str, Any]) -> Path:
    """The GGUF file a model.yml names.

    Jan writes `model_path` relative to its data folder (or absolute, for files imported in
    place); Cortex-era files list `files`. Relative paths are tried against each folder
    above the model.yml, so the data folder's location need not be known.
    """
    named = [jan.get("model_path"), *(jan.get("files") or [])]
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
