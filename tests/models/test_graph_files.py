"""Graphs Ember builds keep their token tables in a mapped data file beside them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ember.atomic_write import write_atomically
from ember.cache import model_fingerprint
from ember.models import graph_files as graph_files_module
from ember.models.graph_files import TABLE_MIN_BYTES, graph_files, save_graph, table_files
from ember.models.loader import weight_copies
from ember.models.registry import ModelRegistry

ROWS, WIDTH = 1024, 256  # a 1 MiB float32 table: just large enough to be mapped


def table_graph(table: np.ndarray) -> onnx.ModelProto:
    """ids -> rows of `table` + a small bias, the shape of an encoder's embedding lookup."""
    bias = np.full((WIDTH,), 0.5, dtype=np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows"]),
        helper.make_node("Add", ["rows", "bias"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", WIDTH])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(bias, "bias")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(path: Path, ids: list[int]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"ids": np.array(ids, dtype=np.int64)})[0])


def a_table(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((ROWS, WIDTH)).astype(np.float32)


def test_the_table_moves_to_an_aligned_data_file_and_reads_the_same(tmp_path: Path) -> None:
    table = a_table(1)
    graph = table_graph(table)
    path = tmp_path / "model.onnx"
    save_graph(graph, path)

    (data,) = table_files(path)
    saved = onnx.load(str(path), load_external_data=False)
    stored = {tensor.name: tensor for tensor in saved.graph.initializer}
    assert stored["table"].data_location == TensorProto.EXTERNAL
    assert stored["bias"].data_location == TensorProto.DEFAULT  # small: stays inline
    location = {entry.key: entry.value for entry in stored["table"].external_data}
    assert location["location"] == data.name
    assert int(location["offset"]) % 4096 == 0
    assert path.stat().st_size < TABLE_MIN_BYTES // 4
    np.testing.assert_array_equal(run(path, [0, 5, 1023]), table[[0, 5, 1023]] + 0.5)
    # the caller's graph still holds its table
    kept = {tensor.name: tensor for tensor in graph.graph.initializer}["table"]
    assert kept.data_location == TensorProto.DEFAULT
    np.testing.assert_array_equal(numpy_helper.to_array(kept), table)


def test_a_rebuilt_graph_leaves_one_data_file_and_a_new_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    save_graph(table_graph(a_table(1)), path)
    first = model_fingerprint(graph_files(path), "{}")
    save_graph(table_graph(a_table(2)), path)
    assert len(table_files(path)) == 1
    assert model_fingerprint(graph_files(path), "{}") != first
    np.testing.assert_array_equal(run(path, [7]), a_table(2)[[7]] + 0.5)
    assert sorted(item.name for item in tmp_path.iterdir()) == sorted(
        ["model.onnx", table_files(path)[0].name]
    )


def test_a_failed_rebuild_leaves_the_previous_graph_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.onnx"
    save_graph(table_graph(a_table(1)), path)

    def disk_full_at_the_graph(target: Path, write: Callable[[IO[bytes]], object]) -> None:
        if target == path:  # the fault: after the new data file is written
            raise OSError("No space left on device")
        write_atomically(target, write)

    monkeypatch.setattr(graph_files_module, "write_atomically", disk_full_at_the_graph)
    with pytest.raises(OSError, match="No space left"):
        save_graph(table_graph(a_table(2)), path)
    monkeypatch.undo()
    np.testing.assert_array_equal(run(path, [3]), a_table(1)[[3]] + 0.5)
    assert not [item.name for item in tmp_path.iterdir() if item.name.endswith(".tmp")]
    save_graph(table_graph(a_table(2)), path)  # the next build tidies the orphan away
    assert len(table_files(path)) == 1


def test_graphs_without_large_tables_stay_one_file(tmp_path: Path) -> None:
    small = np.ones((16, WIDTH), dtype=np.float32)
    path = tmp_path / "model.onnx"
    save_graph(table_graph(small), path)
    assert table_files(path) == []
    assert graph_files(path) == [path]


def test_the_built_model_maps_its_token_table(default_models_dir: Path) -> None:
    """The default model as a user pulls it: MiniLM's 47 MB word table is in the data file,
    and the memory estimate counts it once however many sessions the engine keeps."""
    folder = default_models_dir / "all-MiniLM-L6-v2"
    (data,) = table_files(folder / "model.onnx")
    assert data.stat().st_size >= 30522 * 384 * 4
    (entry,) = ModelRegistry(default_models_dir).models()
    assert entry.settings is not None
    graph_size = (folder / entry.settings.model_file).stat().st_size
    copies = weight_copies(entry.settings)  # the engine's sessions
    assert entry.memory_estimate == graph_size * copies + data.stat().st_size
