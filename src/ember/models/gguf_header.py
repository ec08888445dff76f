"""The key-value header of a GGUF file, read directly: registering a GGUF model needs neither
llama.cpp nor the `gguf` package."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import IO, Any, BinaryIO

from ember.errors import InvalidModelSettings

_SCALARS: dict[int, str] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
    12: "<d",
}  # fmt: skip
_STRING, _ARRAY = 8, 9


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The key-value header of a GGUF file; arrays (the vocabulary among them) are skipped."""
    try:
        with path.open("rb") as stream:
            magic, version = struct.unpack("<4sI", stream.read(8))
            if magic != b"GGUF":
                raise InvalidModelSettings(f"{path.name} is not a GGUF file")
            if version < 2:
                raise InvalidModelSettings(f"{path.name}: GGUF version {version} is too old")
            _tensors, count = struct.unpack("<QQ", stream.read(16))
            metadata: dict[str, Any] = {}
            for _ in range(count):
                key = _read_string(stream)
                (value_type,) = struct.unpack("<I", stream.read(4))
                metadata[key] = _read_value(stream, value_type)
            return metadata
    except (OSError, struct.error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidModelSettings(f"cannot read the GGUF header of {path.name}: {exc}") from exc


def _read_value(stream: BinaryIO, value_type: int) -> Any:
    if value_type in _SCALARS:
        fmt = _SCALARS[value_type]
        return struct.unpack(fmt, stream.read(struct.calcsize(fmt)))[0]
    if value_type == _STRING:
        return _read_string(stream)
    if value_type == _ARRAY:
        item_type, length = struct.unpack("<IQ", stream.read(12))
        if item_type in _SCALARS:
            stream.seek(length * struct.calcsize(_SCALARS[item_type]), os.SEEK_CUR)
        else:
            for _ in range(length):
                _read_value(stream, item_type)
        return None
    raise ValueError(f"unknown GGUF value type {value_type}")


def _read_string(stream: IO[bytes]) -> str:
    (length,) = struct.unpack("<Q", stream.read(8))
    return stream.read(length).decode("utf-8")
