"""OpenVinoEngine against OnnxEngine on the same graph files, and the graphs it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from ember.engines.base import TokenBatch, TokenIds
from ember.engines.onnx import OnnxEngine
from ember.engines.onnx_graphs.bert import build_bert_graph
from ember.engines.onnx_graphs.builder import CHUNK_TOKENS_CONSTANT, set_metadata
from ember.engines.openvino import NotForOpenVino, OpenVinoEngine, _pieces
from ember.errors import EngineFailure, ModelLoadFailed
from ember.pooling import NORMALIZED_METADATA
from tests.engines.test_bert_graph import POSITIONS, VOCAB, tiny_config, tiny_weights
from tests.support.openvino import require_openvino

require_openvino()


def saved_graph(
    folder: Path, name: str, *, chunk_tokens: int | None = 1024, fused: bool = False
) -> Path:
    path = folder / f"{name}.onnx"
    graph = build_bert_graph(
        tiny_config(),
        tiny_weights(),
        pooling="mean",
        normalize=True,
        chunk_tokens=chunk_tokens,
        fused=fused,
    )
    onnx.save(graph, path)
    return path


def ragged_batch(seed: int, rows: int, longest: int = POSITIONS) -> TokenBatch:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, longest + 1, size=rows)
    return TokenBatch([rng.integers(4, VOCAB, size=int(n)).astype(np.int64) for n in lengths])


def both(path: Path) -> tuple[OpenVinoEngine, OnnxEngine]:
    return (
        OpenVinoEngine(path, pooling="mean", normalize_output=True),
        OnnxEngine(path, pooling="mean", normalize_output=True),
    )


@pytest.mark.parametrize(("chunk_tokens", "rows"), [(1024, 5), (1024, 60), (24, 9), (None, 40)])
def test_vectors_equal_onnx_runtimes(tmp_path: Path, chunk_tokens: int | None, rows: int) -> None:
    """Ragged, padded batches; with blocks of 24 tokens and 60 rows of up to 24, the batch spans
    many of the graph's row blocks, so the engine cuts it into calls of one block each."""
    openvino, onnxruntime = both(saved_graph(tmp_path, "bert", chunk_tokens=chunk_tokens))
    for seed in range(3):
        batch = ragged_batch(seed, rows)
        served, expected = openvino.embed(batch), onnxruntime.embed(batch)
        assert served.shape == (rows, 32)
        np.testing.assert_allclose(served, expected, atol=2e-5)
    assert openvino.runtime == "openvino"
    assert onnxruntime.runtime == "onnxruntime"
    assert openvino.lanes == 1
    assert openvino.dimensions == 32


def test_an_empty_batch_gives_no_rows(tmp_path: Path) -> None:
    openvino, _ = both(saved_graph(tmp_path, "bert"))
    assert openvino.embed(TokenBatch([])).shape == (0, 32)


def test_calls_after_close_raise_engine_failure_and_closing_twice_is_harmless(
    tmp_path: Path,
) -> None:
    """A second close raised AttributeError, and so did a call after close."""
    openvino, _ = both(saved_graph(tmp_path, "bert"))
    openvino.close()
    openvino.close()
    with pytest.raises(EngineFailure, match="closed"):
        openvino.embed(ragged_batch(2, 3))


def test_pieces_keep_every_row_in_order_within_the_block() -> None:
    batch = ragged_batch(7, 50, longest=40)
    pieces = _pieces(batch, 64)
    rows: list[TokenIds] = [row for piece in pieces for row in piece.sequences]
    assert [id(row) for row in rows] == [id(row) for row in batch.sequences]
    for piece in pieces:
        assert piece.padded_tokens <= 64 or len(piece) == 1
    assert _pieces(batch, None) == [batch]
    assert _pieces(TokenBatch([]), 64) == [] == _pieces(TokenBatch([]), None)


def test_graphs_with_microsoft_operators_are_refused(tmp_path: Path) -> None:
    fused = saved_graph(tmp_path, "fused", fused=True)  # Attention, SkipLayerNormalization
    with pytest.raises(NotForOpenVino, match=r"com\.microsoft"):
        OpenVinoEngine(fused, pooling="mean", normalize_output=True)


def test_a_loop_of_unknown_block_size_is_refused(tmp_path: Path) -> None:
    model = onnx.load(saved_graph(tmp_path, "bert"))
    (block,) = [t for t in model.graph.initializer if t.name == CHUNK_TOKENS_CONSTANT]
    block.name = "someone_elses_constant"
    for node in model.graph.node:
        node.input[:] = [
            "someone_elses_constant" if x == CHUNK_TOKENS_CONSTANT else x for x in node.input
        ]
    path = tmp_path / "foreign_loop.onnx"
    onnx.save(model, path)
    with pytest.raises(NotForOpenVino, match="Loop"):
        OpenVinoEngine(path, pooling="mean", normalize_output=True)


def test_unreadable_file_is_a_load_failure(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a graph")
    with pytest.raises(ModelLoadFailed, match=r"broken\.onnx"):
        OpenVinoEngine(path, pooling="mean", normalize_output=True)


def test_a_graph_openvino_cannot_convert_is_one_clear_load_failure(tmp_path: Path) -> None:
    """A standard operator OpenVINO has no conversion for: the message kept only the first
    line of OpenVINO's error, a source location ("Exception from src/inference/...")."""
    ids = onnx.helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["b", "s"])
    output = onnx.helper.make_tensor_value_info("sentence_embedding", onnx.TensorProto.FLOAT, [])
    counts = onnx.helper.make_node(
        "TfIdfVectorizer", ["input_ids"], ["sentence_embedding"], mode="TF", min_gram_length=1,
        max_gram_length=1, max_skip_count=0, ngram_counts=[0], ngram_indexes=[0, 1],
        pool_int64s=[5, 6],
    )  # fmt: skip
    graph = onnx.helper.make_graph([counts], "tfidf", [ids], [output])
    path = tmp_path / "tfidf.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    with pytest.raises(ModelLoadFailed) as refused:
        OpenVinoEngine(path, pooling="mean", normalize_output=True)
    message = refused.value.message
    assert message.startswith("OpenVINO cannot load tfidf.onnx: ")
    assert "TfIdfVectorizer" in message
    assert "Exception from" not in message
    assert str(tmp_path) not in message


@pytest.mark.parametrize("held_in", ["initializer", "constant_node"])
def test_graphs_with_low_precision_weights_are_refused(tmp_path: Path, held_in: str) -> None:
    """One product's weight stored as int8 and dequantised in the graph (Cast, Mul), as
    weight-quantised exports do: ONNX Runtime runs it, OpenVINO would use its own kernels.
    Held in a Constant node rather than an initializer, as some exporters write weights, it
    was accepted."""
    model = onnx.load(saved_graph(tmp_path, "bert"))
    name = "encoder.layer.0.intermediate.dense.weight"
    (weight,) = [t for t in model.graph.initializer if t.name == name]
    values = onnx.numpy_helper.to_array(weight)
    scale = np.float32(np.abs(values).max() / 127)
    model.graph.initializer.remove(weight)
    stored = [
        onnx.numpy_helper.from_array(np.round(values / scale).astype(np.int8), name + "_q"),
        onnx.numpy_helper.from_array(np.asarray(scale), name + "_scale"),
    ]
    cast = onnx.helper.make_node("Cast", [name + "_q"], [name + "_f"], to=onnx.TensorProto.FLOAT)
    dequantize = onnx.helper.make_node("Mul", [name + "_f", name + "_scale"], [name])
    model.graph.node.insert(0, dequantize)
    model.graph.node.insert(0, cast)
    if held_in == "initializer":
        model.graph.initializer.extend(stored)
    else:
        for tensor in stored:
            constant = onnx.helper.make_node("Constant", [], [tensor.name], value=tensor)
            model.graph.node.insert(0, constant)
    path = tmp_path / "int8_weights.onnx"
    onnx.save(model, path)
    with pytest.raises(NotForOpenVino, match="INT8"):
        OpenVinoEngine(path, pooling="mean", normalize_output=True)
    vectors = OnnxEngine(path, pooling="mean", normalize_output=True).embed(ragged_batch(1, 3))
    assert vectors.shape == (3, 32)


@pytest.mark.parametrize("marked", [False, True])
def test_the_graphs_mark_decides_whether_its_vectors_are_normalised_again(
    tmp_path: Path, marked: bool
) -> None:
    graph = build_bert_graph(
        tiny_config(), tiny_weights(), pooling="mean", normalize=False, fused=False
    )
    if marked:  # falsely, so that a second normalisation would show: the mark is trusted
        set_metadata(graph, NORMALIZED_METADATA, "true")
    path = tmp_path / "model.onnx"
    onnx.save(graph, path)
    engine = OpenVinoEngine(path, pooling="mean", normalize_output=True)
    try:
        vectors = engine.embed(ragged_batch(seed=3, rows=4))
    finally:
        engine.close()
    unit = bool(np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5))
    assert unit is not marked
