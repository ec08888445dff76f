"""The model registry: model ids to folders and settings, loaded on first use and kept."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ember.errors import EmberError, ModelNotFound
from ember.models.loader import LoadedModel, load_model
from ember.models.settings import SETTINGS_FILE, ModelSettings, read_settings

log = logging.getLogger(__name__)

Loader = Callable[[Path, ModelSettings, bool], LoadedModel]


@dataclass
class RegisteredModel:
    """One folder of the models directory, with its load state."""

    folder: Path
    settings: ModelSettings | None
    problem: str | None = None
    loaded: LoadedModel | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def model_id(self) -> str:
        return self.settings.id if self.settings else self.folder.name


class ModelRegistry:
    """Finds models under `models_dir`, loads each once on demand, keeps it loaded."""

    def __init__(self, models_dir: Path, loader: Loader | None = None) -> None:
        self.models_dir = models_dir
        self._loader: Loader = loader or _default_loader
        self.on_load: Callable[[str, float], None] | None = None
        self._models: dict[str, RegisteredModel] = {}
        self._names: dict[str, str] = {}
        self.rescan()

    def rescan(self) -> None:
        """Pick up folders added or removed since the last scan; loaded models stay."""
        found: dict[str, RegisteredModel] = {}
        folders = (
            sorted(
                path
                for path in self.models_dir.glob(f"*/{SETTINGS_FILE}")
                if not path.parent.name.startswith(".")
            )
            if self.models_dir.is_dir()
            else []
        )
        for settings_path in folders:
            folder = settings_path.parent
            try:
                settings: ModelSettings | None = read_settings(folder)
                problem = None
            except EmberError as exc:
                settings, problem = None, exc.message
            entry = RegisteredModel(folder, settings, problem)
            previous = self._models.get(entry.model_id)
            if previous is not None and previous.settings == settings:
                entry = previous
            found[entry.model_id] = entry
        self._models = found
        self._names = {}
        for model_id, entry in found.items():
            for name in entry.settings.names if entry.settings else (model_id,):
                self._names.setdefault(name, model_id)

    def models(self) -> list[RegisteredModel]:
        return list(self._models.values())

    def find(self, name: str) -> RegisteredModel:
        """The model registered under `name` (id or alias); rescans once before giving up."""
        if name not in self._names:
            self.rescan()
        model_id = self._names.get(name)
        if model_id is None:
            available = ", ".join(sorted(self._models)) or "none (see `ember models pull`)"
            raise ModelNotFound(
                f"The model '{name}' does not exist. Available models: {available}", name
            )
        return self._models[model_id]

    async def acquire(self, name: str, *, reload: bool = False) -> LoadedModel:
        """The loaded model named `name`, loading it first if needed (once, however many ask)."""
        entry = self.find(name)
        if entry.settings is None:
            from ember.errors import InvalidModelSettings

            raise InvalidModelSettings(entry.problem or "invalid settings", entry.model_id)
        settings = entry.settings
        async with entry.lock:
            if entry.loaded is not None and not reload:
                return entry.loaded
            previous, entry.loaded = entry.loaded, None
            if previous is not None:
                previous.engine.close()
            try:
                entry.loaded = await asyncio.to_thread(self._loader, entry.folder, settings, reload)
            except EmberError as exc:
                entry.problem = exc.message
                raise
            entry.problem = None
            log.info("loaded %s in %.2f s", settings.id, entry.loaded.load_seconds)
            if self.on_load is not None:
                self.on_load(settings.id, entry.loaded.load_seconds)
            return entry.loaded

    def unload(self, name: str) -> bool:
        """Release a loaded model; returns whether it was loaded."""
        entry = self.find(name)
        if entry.loaded is None:
            return False
        entry.loaded.engine.close()
        entry.loaded = None
        return True

    def close(self) -> None:
        for entry in self._models.values():
            if entry.loaded is not None:
                entry.loaded.engine.close()
                entry.loaded = None


def _default_loader(folder: Path, settings: ModelSettings, reloading: bool) -> LoadedModel:
    return load_model(folder, settings, reloading=reloading)
