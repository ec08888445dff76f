"""OnnxEngine normalises a graph's vectors only when the graph does not say it already did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from ember.engines.base import TokenBatch
from ember.engines.onnx import OnnxEngine
from ember.engines.onnx_graphs.bert import build_bert_graph
from ember.engines.onnx_graphs.builder import set_metadata
from ember.pooling import NORMALIZED_METADATA
from tests.engines.test_bert_graph import tiny_config, tiny_weights

SEQUENCES = [np.array([2, 5, 9, 4], dtype=np.int64), np.array([2, 7], dtype=np.int64)]


def norms(graph: onnx.ModelProto, folder: Path) -> list[float]:
    """Row norms of the vectors an engine told to normalise gives for the graph's output."""
    path = folder / "model.onnx"
    onnx.save(graph, path)
    engine = OnnxEngine(path, pooling="mean", normalize_output=True, lanes=1)
    try:
        vectors = engine.embed(TokenBatch(SEQUENCES))
    finally:
        engine.close()
    return [float(norm) for norm in np.linalg.norm(vectors, axis=1)]


@pytest.mark.parametrize("normalize", [True, False])
def test_a_graph_says_whether_it_normalises(normalize: bool) -> None:
    graph = build_bert_graph(tiny_config(), tiny_weights(), pooling="mean", normalize=normalize)
    metadata = {entry.key: entry.value for entry in graph.metadata_props}
    assert (metadata.get(NORMALIZED_METADATA) == "true") is normalize


def test_an_unmarked_graph_is_normalised_as_the_settings_say(tmp_path: Path) -> None:
    graph = build_bert_graph(tiny_config(), tiny_weights(), pooling="mean", normalize=False)
    assert norms(graph, tmp_path) == pytest.approx([1.0, 1.0], abs=1e-6)


def test_a_graph_marked_normalised_is_not_normalised_again(tmp_path: Path) -> None:
    # Marked falsely, so that a second normalisation would show: the marker is trusted.
    graph = build_bert_graph(tiny_config(), tiny_weights(), pooling="mean", normalize=False)
    set_metadata(graph, NORMALIZED_METADATA, "true")
    assert all(abs(norm - 1.0) > 1e-3 for norm in norms(graph, tmp_path))


def test_a_lone_sequence_is_fed_unpadded_and_a_batch_padded() -> None:
    ids, mask = TokenBatch(SEQUENCES[:1]).padded(pad_id=0)
    assert ids.tolist() == [[2, 5, 9, 4]]
    assert mask.tolist() == [[1, 1, 1, 1]]
    ids, mask = TokenBatch(SEQUENCES).padded(pad_id=3)
    assert ids.tolist() == [[2, 5, 9, 4], [2, 7, 3, 3]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
