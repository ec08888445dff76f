"""The model registry: model ids to folders and settings, loaded on first use and kept.

Models stay loaded (the seed's contract) unless their `keep_alive` says otherwise, or a
memory budget forces the least recently used one out to make room for another.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG

from ember.engines.heap import return_freed_memory
from ember.errors import (
    EmberError,
    InvalidModelSettings,
    ModelError,
    ModelLoadFailed,
    ModelNotFound,
)
from ember.file_identity import FileIdentity, file_identity
from ember.models.graph_files import table_files
from ember.models.loader import LoadedModel, load_model, weight_copies
from ember.models.settings import SETTINGS_FILE, ModelSettings, read_settings

log = logging.getLogger(__name__)

Loader = Callable[[Path, ModelSettings, bool], LoadedModel]


@dataclass
class RegisteredModel:
    """One folder of the models directory, with its load state."""

    folder: Path
    settings: ModelSettings | None
    problem: str | None = None
    # Its model.json's, when scanned: a folder removed and added again may reuse the old
    # folder's inode, but its model.json is written anew, so this tells them apart.
    identity: FileIdentity | None = None
    loaded: LoadedModel | None = None
    last_used: float = 0.0
    users: int = 0  # requests using it now: it is not idle, whatever its keep_alive
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    loads: int = 0  # load attempts ended: a request that waited on one takes its outcome
    failure: type[ModelError] | None = None  # how the last attempt failed (`problem` says why)

    @property
    def model_id(self) -> str:
        return self.settings.id if self.settings else self.folder.name

    @property
    def memory_estimate(self) -> int:
        """Bytes the loaded model may hold: its weights file, as runtimes map it, once per
        copy its engine may keep (see weight_copies), and its lookup tables once (mapped
        from their file, shared by the copies). A file gone counts 0: listed, then gone before
        its size was read (its folder removed meanwhile), it raised, and the request a 500."""
        if self.settings is None:
            return 0
        weights = self.folder / self.settings.model_file
        tables = sum(_file_size(path) for path in table_files(weights))
        return _file_size(weights) * weight_copies(self.settings) + tables

    @functools.cached_property
    def _settings_path(self) -> str:
        return str(self.folder / SETTINGS_FILE)

    @property
    def replaced(self) -> bool:
        """Whether the folder is gone, or is another one now (removed and added again).

        Asked on every request (twice), so it is one `stat` of a path made once: the
        path joined anew each time cost 5 us, the `stat` alone 1.3.
        """
        return file_identity(self._settings_path) != self.identity


@dataclass(frozen=True)
class _SettingsRead:
    """A folder's model.json as last parsed, and the file's identity just before."""

    identity: FileIdentity | None
    settings: ModelSettings | None
    problem: str | None


class ModelRegistry:
    """Finds models under `models_dir`, loads each once on demand, keeps it loaded."""

    def __init__(
        self,
        models_dir: Path,
        loader: Loader | None = None,
        *,
        memory_budget: int | None = None,
    ) -> None:
        self.models_dir = models_dir
        self.memory_budget = memory_budget
        self.on_load: Callable[[str, float], None] | None = None
        self._loader: Loader = loader or _default_loader
        self._models: dict[str, RegisteredModel] = {}
        self._names: dict[str, str] = {}
        self._clashes: set[str] = set()
        self._models_dir_path = str(models_dir)
        # Changes when a folder in it is added, removed or renamed.
        self._models_dir_identity: FileIdentity | None = None
        self._reads: dict[Path, _SettingsRead] = {}  # by folder, those of the last scan
        # With a budget, models load one at a time: room is made for a model when its load
        # starts, so two loads at once would each count only the models already loaded.
        self._budgeted_load = asyncio.Lock()
        self.rescan()

    def rescan(self) -> None:
        """Pick up folders added, removed or replaced since the last scan; loaded models stay
        while their folder and settings do.

        A name two folders claim goes to a model's own id before another's alias, else to the
        first folder, and each such clash is logged once, while it lasts.
        """
        found: dict[str, RegisteredModel] = {}
        clashes: list[str] = []
        reads: dict[Path, _SettingsRead] = {}
        self._models_dir_identity = file_identity(self._models_dir_path)
        for folder in self._model_folders():
            read = reads[folder] = self._read_settings(folder)
            settings = read.settings
            entry = RegisteredModel(folder, settings, read.problem, read.identity)
            if entry.model_id in found:
                clashes.append(_clash(entry.model_id, found[entry.model_id], entry))
                continue
            previous = self._models.get(entry.model_id)
            if (  # a folder renamed keeps its model.json's identity, not its path
                previous is not None
                and previous.folder == folder
                and previous.settings == settings
                and previous.identity == entry.identity
            ):
                entry = previous
            found[entry.model_id] = entry
        kept = {id(entry) for entry in found.values()}
        dropped = [entry for entry in self._models.values() if id(entry) not in kept]
        self._models = found
        self._reads = reads  # a folder gone takes its settings with it
        for entry in dropped:  # its folder is gone or another one now
            self._release(entry)
        self._names = {model_id: model_id for model_id in found}
        for model_id, entry in found.items():
            for alias in entry.settings.aliases if entry.settings else ():
                holder = self._names.setdefault(alias, model_id)
                if holder != model_id:
                    clashes.append(_clash(alias, found[holder], entry))
        for clash in clashes:
            if clash not in self._clashes:  # /v1/models rescans on every call
                log.warning("%s", clash)
        self._clashes = set(clashes)

    def _read_settings(self, folder: Path) -> _SettingsRead:
        """`folder`'s settings, parsed again only once its model.json is another file or
        changed: /metrics and /v1/models rescan on every call, and a parse costs 20 us a model.

        The identity is taken before the read, so a file rewritten during it is read again
        at the next scan rather than kept, stale, under the new file's identity.
        """
        identity = file_identity(folder / SETTINGS_FILE)
        known = self._reads.get(folder)
        if known is not None and identity is not None and known.identity == identity:
            return known
        try:
            return _SettingsRead(identity, read_settings(folder), None)
        except EmberError as exc:
            return _SettingsRead(identity, None, exc.message)

    def models(self) -> list[RegisteredModel]:
        return list(self._models.values())

    def find(self, name: str) -> RegisteredModel:
        """The model registered under `name` (id or alias); rescans once before giving up, or
        when its folder was removed or replaced (`ember models rm`, `add`, `pull`), or a folder
        was added, removed or renamed beside it (one that now claims `name` as its id)."""
        known = self._names.get(name)
        if (
            known is None
            or self._models[known].replaced
            or file_identity(self._models_dir_path) != self._models_dir_identity
        ):
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
        return await self.load(self.find(name), reload=reload)

    async def load(self, entry: RegisteredModel, *, reload: bool = False) -> LoadedModel:
        """`entry` (as `find` just gave it) loaded, loading it first if needed.

        Requests that wait while a load runs take its outcome: its model (a reload too, as
        lanes failing at once each ask for one), or its error. Each tried again in turn, so
        64 clients on a model that took a second to fail waited up to a minute.
        """
        if entry.settings is None:
            raise InvalidModelSettings(entry.problem or "invalid settings", entry.model_id)
        entry.last_used = time.monotonic()
        if entry.loaded is not None and not reload:
            return entry.loaded
        settings = entry.settings
        attempts = entry.loads
        async with entry.lock:
            if entry.loaded is not None and (entry.loads != attempts or not reload):
                return entry.loaded
            if entry.loads != attempts and entry.failure is not None:
                raise entry.failure(entry.problem or "cannot load", settings.id)
            previous, entry.loaded = entry.loaded, None
            if previous is not None:
                previous.engine.close()
            entry.failure = None  # an attempt ended otherwise (cancelled) leaves waiters to retry
            budgeted = self._budgeted_load if self.memory_budget is not None else None
            async with budgeted or contextlib.nullcontext():
                self._make_room_for(entry)
                try:
                    entry.loaded = await asyncio.to_thread(
                        self._loader, entry.folder, settings, reload
                    )
                except EmberError as exc:
                    entry.problem = exc.message
                    entry.failure = type(exc) if isinstance(exc, ModelError) else None
                    raise
                except (OSError, ValueError, RuntimeError) as exc:  # a runtime choking on a file
                    entry.problem = f"{settings.id}: cannot load: {exc}"
                    entry.failure = ModelLoadFailed
                    raise ModelLoadFailed(entry.problem, settings.id) from exc
                finally:
                    entry.loads += 1
            entry.problem, entry.failure = None, None
            log.info("loaded %s in %.2f s", settings.id, entry.loaded.load_seconds)
            if self.on_load is not None:
                self.on_load(settings.id, entry.loaded.load_seconds)
            return entry.loaded

    def serving(self, model: LoadedModel) -> LoadedModel:
        """What serves a request that loaded `model`: the model's load now, or `model` itself
        once unloaded (keep_alive, the memory budget, its folder removed). Unloading only
        drops it, so the request that holds it can finish on it; a reload closes it."""
        entry = self._models.get(model.settings.id)
        current = entry.loaded if entry is not None else None
        return current if current is not None else model

    @contextlib.contextmanager
    def in_use(self, entry: RegisteredModel) -> Iterator[None]:
        """Mark `entry` busy for a request's whole life: `keep_alive` unloads a model idle
        that long after its last request ended, never one a request is still using."""
        entry.users += 1
        try:
            yield
        finally:
            entry.users -= 1
            entry.last_used = time.monotonic()

    def unload(self, name: str) -> bool:
        """Release a loaded model; returns whether it was loaded.

        The engine is dropped, not closed: a batch already running on it keeps its own
        reference and finishes; the memory goes when that batch does. Otherwise it goes on a
        thread of its own: freeing a model's runtime sessions took 22-37 ms (MiniLM, fp32 and
        int8) on the event loop that called this, stalling every request meanwhile.
        """
        return self._release(self.find(name))

    def _release(self, entry: RegisteredModel) -> bool:
        """Unload `entry` (see unload), also once the registry no longer lists it: dropped
        with its entry, a model was freed on the thread that rescanned, the event loop."""
        if entry.loaded is None:
            return False
        held = [entry.loaded]  # the only reference this frame keeps, cleared on the thread
        entry.loaded = None

        def free() -> None:
            held.clear()
            return_freed_memory()

        # Not a daemon: a session freed while the interpreter exits can abort the process.
        threading.Thread(target=free, name=f"unload-{entry.model_id}").start()
        log.info("unloaded %s", entry.model_id)
        return True

    def unload_idle(self, now: float | None = None) -> list[str]:
        """Unload models idle longer than their `keep_alive`; returns their ids.

        Entries are released as they are, not found again by name: a model whose folder was
        removed since is not found, and the ModelNotFound ended the server's keep_alive task.
        """
        now = time.monotonic() if now is None else now
        idle = [
            entry
            for entry in self._models.values()
            if entry.loaded is not None
            and not entry.users
            and entry.settings is not None
            and entry.settings.keep_alive is not None
            and now - entry.last_used > entry.settings.keep_alive
        ]
        for entry in idle:
            self._release(entry)
        return [entry.model_id for entry in idle]

    def close(self) -> None:
        for entry in self._models.values():
            if entry.loaded is not None:
                entry.loaded.engine.close()
                entry.loaded = None

    def _make_room_for(self, incoming: RegisteredModel) -> None:
        """Unload models until `incoming` fits the memory budget: idle ones first, least
        recently used first. A model a request is using goes last: its running batches keep
        its engine, so unloading it frees nothing until they finish, and its next request
        would load it again."""
        if self.memory_budget is None:
            return
        loaded = sorted(
            (entry for entry in self._models.values() if entry.loaded and entry is not incoming),
            key=lambda entry: (entry.users > 0, entry.last_used),
        )
        in_use = sum(entry.memory_estimate for entry in loaded)
        for entry in loaded:
            if in_use + incoming.memory_estimate <= self.memory_budget:
                return
            self._release(entry)  # not by name: see unload_idle
            in_use -= entry.memory_estimate

    def _model_folders(self) -> list[Path]:
        if not self.models_dir.is_dir():
            return []
        return sorted(
            path.parent
            for path in self.models_dir.glob(f"*/{SETTINGS_FILE}")
            if not path.parent.name.startswith(".")
        )


def _file_size(path: Path) -> int:
    """The size of the file at `path`; 0 for none (gone, a broken link, a folder)."""
    try:
        status = path.stat()
    except OSError:
        return 0
    return status.st_size if S_ISREG(status.st_mode) else 0


def _clash(name: str, kept: RegisteredModel, other: RegisteredModel) -> str:
    return (
        f"models '{kept.model_id}' in {kept.folder} and '{other.model_id}' in {other.folder} "
        f"both claim the name '{name}'; it goes to the one in {kept.folder}"
    )


def _default_loader(folder: Path, settings: ModelSettings, reloading: bool) -> LoadedModel:
    return load_model(folder, settings, reloading=reloading)
