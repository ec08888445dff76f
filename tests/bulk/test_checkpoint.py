"""The checkpoint file: round trip, damage, leftovers of a kill, and what makes runs differ."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.bulk.checkpoint import (
    Checkpoint,
    check_same_run,
    checkpoint_path,
    read_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from ember.bulk.errors import CheckpointBroken, CheckpointMismatch


def test_checkpoint_round_trips_and_sits_beside_the_output(tmp_path: Path) -> None:
    path = checkpoint_path(tmp_path / "vectors.parquet")
    assert path.name == "vectors.parquet.ember-checkpoint.json"
    assert read_checkpoint(path) is None
    saved = Checkpoint({"model": "m"}, total_rows=10).advanced(4, 40, 1, 2, {"parts": 1})
    save_checkpoint(path, saved)
    assert read_checkpoint(path) == saved


@pytest.mark.parametrize("content", ["{not json", "[]", '{"version": 99}', '{"version": 1}'])
def test_damaged_checkpoint_asks_for_a_restart(tmp_path: Path, content: str) -> None:
    path = tmp_path / "out.npy.ember-checkpoint.json"
    path.write_text(content)
    with pytest.raises(CheckpointBroken, match="--restart"):
        read_checkpoint(path)


def test_removing_a_checkpoint_removes_temp_files_a_kill_left(tmp_path: Path) -> None:
    path = tmp_path / "out.npy.ember-checkpoint.json"
    save_checkpoint(path, Checkpoint({}, total_rows=1))
    leftover = tmp_path / ".out.npy.ember-checkpoint.json.k2j3.tmp"
    leftover.write_text("{")
    unrelated = tmp_path / ".other.json.k2j3.tmp"
    unrelated.write_text("{")
    remove_checkpoint(path)
    assert sorted(path.name for path in tmp_path.iterdir()) == [unrelated.name]


def test_every_difference_is_named(tmp_path: Path) -> None:
    saved = Checkpoint({"input size": 10, "model": "a", "truncate": True}, total_rows=5)
    with pytest.raises(CheckpointMismatch) as refusal:
        check_same_run(tmp_path / "c.json", saved, {"input size": 11, "model": "a"})
    assert "input size: was 10, now 11" in refusal.value.message
    assert "truncate: was True, now absent" in refusal.value.message
    assert "model:" not in refusal.value.message
    check_same_run(tmp_path / "c.json", saved, dict(saved.identity))
