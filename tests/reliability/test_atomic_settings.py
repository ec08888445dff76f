"""Settings files are replaced whole: a crash mid-write keeps the old; readers never see half."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from ember.models.registry import ModelRegistry
from ember.models.settings import ModelSettings, read_settings, write_settings
from tests.support.models import write_fake_model


def settings_of(folder: Path, **changes: Any) -> ModelSettings:
    return read_settings(folder).model_copy(update=changes)


def crash_halfway(payload: Any, stream: Any, **_options: Any) -> None:
    stream.write(json.dumps(payload)[:20])
    raise OSError("disk full")


@pytest.mark.parametrize("where", ["while writing", "before the rename"])
def test_a_crash_while_saving_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    folder = write_fake_model(tmp_path, "tiny")
    before = (folder / "model.json").read_bytes()
    if where == "while writing":
        monkeypatch.setattr(json, "dump", crash_halfway)
    else:

        def refuse(*_args: Any) -> None:
            raise OSError("power cut")

        monkeypatch.setattr("ember.atomic_write.os.replace", refuse)
    with pytest.raises(OSError, match=r"disk full|power cut"):
        write_settings(folder, settings_of(folder, ctx_len=99))
    monkeypatch.undo()
    assert (folder / "model.json").read_bytes() == before
    assert sorted(path.name for path in folder.iterdir()) == ["model.json", "tokenizer.json"]
    assert ModelRegistry(tmp_path).find("tiny").settings == read_settings(folder)


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    folder = write_fake_model(tmp_path, "tiny")
    versions = [settings_of(folder, ctx_len=size, prompts={"q": "x" * size}) for size in (1, 4000)]
    stop = threading.Event()

    def keep_writing() -> None:
        while not stop.is_set():
            for version in versions:
                write_settings(folder, version)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        seen = {read_settings(folder).ctx_len for _ in range(500)}
    finally:
        stop.set()
        writer.join()
    assert seen <= {16, 1, 4000}  # the original, then either version, always whole
    assert not [path.name for path in folder.iterdir() if path.name.endswith(".tmp")]
