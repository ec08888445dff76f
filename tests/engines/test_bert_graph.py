"""The BERT graph builder against an independent numpy forward pass, on tiny random weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from ember.engines.onnx_graphs.bert import build_bert_graph
from tests.reference_forward.bert import bert_sentence_embeddings

HIDDEN, LAYERS, HEADS, INTERMEDIATE, VOCAB, POSITIONS = 32, 2, 4, 64, 100, 24
# Ragged token counts, padded on the right to the longest: as the engine batches them.
LENGTHS = (7, 12, 1, 4, 9)
# Row blocks of the graph's Loop: one block, blocks of 2 rows (the last one short), no Loop.
CHUNKINGS = [1024, 24, None]

Weights = dict[str, npt.NDArray[Any]]


def tiny_config(hidden_act: str = "gelu") -> dict[str, Any]:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": HIDDEN,
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "intermediate_size": INTERMEDIATE,
        "hidden_act": hidden_act,
        "layer_norm_eps": 1e-12,
        "vocab_size": VOCAB,
        "max_position_embeddings": POSITIONS,
        "type_vocab_size": 2,
        "position_embedding_type": "absolute",
    }


def tiny_weights(prefix: str = "", seed: int = 0) -> Weights:
    """Random float32 tensors under BertModel's safetensors names, buffers and pooler included."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int, scale: float = 0.2, offset: float = 0.0) -> npt.NDArray[np.float32]:
        return (offset + scale * rng.standard_normal(shape)).astype(np.float32)

    weights: Weights = {
        "embeddings.word_embeddings.weight": normal(VOCAB, HIDDEN, scale=1.0),
        "embeddings.position_embeddings.weight": normal(POSITIONS, HIDDEN),
        "embeddings.token_type_embeddings.weight": normal(2, HIDDEN),
        "embeddings.LayerNorm.weight": normal(HIDDEN, offset=1.0),
        "embeddings.LayerNorm.bias": normal(HIDDEN),
        "embeddings.position_ids": np.arange(POSITIONS, dtype=np.int64)[None, :],
        "pooler.dense.weight": normal(HIDDEN, HIDDEN),
        "pooler.dense.bias": normal(HIDDEN),
    }
    shapes = {
        "attention.self.query": (HIDDEN, HIDDEN),
        "attention.self.key": (HIDDEN, HIDDEN),
        "attention.self.value": (HIDDEN, HIDDEN),
        "attention.output.dense": (HIDDEN, HIDDEN),
        "intermediate.dense": (INTERMEDIATE, HIDDEN),
        "output.dense": (HIDDEN, INTERMEDIATE),
    }
    for layer in range(LAYERS):
        for name, shape in shapes.items():
            weights[f"encoder.layer.{layer}.{name}.weight"] = normal(*shape)
            weights[f"encoder.layer.{layer}.{name}.bias"] = normal(shape[0])
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            weights[f"encoder.layer.{layer}.{norm}.weight"] = normal(HIDDEN, offset=1.0)
            weights[f"encoder.layer.{layer}.{norm}.bias"] = normal(HIDDEN)
    return {prefix + name: tensor for name, tensor in weights.items()}


def padded_batch(
    lengths: tuple[int, ...], width: int | None = None, seed: int = 1
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Random ids with [CLS]-like 2 first, right-padded with id 0 to `width` (default longest)."""
    rng = np.random.default_rng(seed)
    width = width or max(lengths)
    input_ids = np.zeros((len(lengths), width), dtype=np.int64)
    attention_mask = np.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = rng.integers(3, VOCAB, length)
        input_ids[row, 0] = 2
        attention_mask[row, :length] = 1
    return input_ids, attention_mask


def run_graph(
    config: dict[str, Any],
    weights: Weights,
    input_ids: npt.NDArray[np.int64],
    attention_mask: npt.NDArray[np.int64],
    **options: Any,
) -> npt.NDArray[np.float32]:
    model = build_bert_graph(config, weights, **options)
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), session_options, providers=["CPUExecutionProvider"]
    )
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
    (output,) = session.run(["sentence_embedding"], feeds)
    return np.asarray(output)


@pytest.mark.parametrize("prefix", ["", "bert."])
@pytest.mark.parametrize("pooling", ["mean", "cls", "lasttoken"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("chunk_tokens", CHUNKINGS)
@pytest.mark.parametrize("fused_attention", [True, False], ids=["attention-op", "standard"])
def test_matches_reference(
    prefix: str, pooling: str, normalize: bool, chunk_tokens: int | None, fused_attention: bool
) -> None:
    config, weights = tiny_config(), tiny_weights(prefix)
    input_ids, attention_mask = padded_batch(LENGTHS)
    options: dict[str, Any] = {"pooling": pooling, "normalize": normalize}
    actual = run_graph(
        config,
        weights,
        input_ids,
        attention_mask,
        chunk_tokens=chunk_tokens,
        fused_attention=fused_attention,
        **options,
    )
    expected = bert_sentence_embeddings(config, weights, input_ids, attention_mask, **options)
    assert actual.dtype == np.float32
    assert actual.shape == (len(LENGTHS), HIDDEN)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls", "lasttoken"])
def test_fused_operators_match_reference(pooling: str) -> None:
    config, weights = tiny_config(), tiny_weights()
    input_ids, attention_mask = padded_batch(LENGTHS)
    options: dict[str, Any] = {"pooling": pooling, "normalize": True}
    actual = run_graph(config, weights, input_ids, attention_mask, fused=True, **options)
    expected = bert_sentence_embeddings(config, weights, input_ids, attention_mask, **options)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


def test_default_attention_is_one_operator_per_layer() -> None:
    config = tiny_config()
    model = build_bert_graph(config, tiny_weights(), pooling="mean", normalize=True)
    loop = next(node for node in model.graph.node if node.op_type == "Loop")
    body = loop.attribute[0].g.node
    attention = [node for node in body if node.op_type == "Attention"]
    assert len(attention) == config["num_hidden_layers"]
    assert {node.domain for node in attention} == {"com.microsoft"}
    assert not any(node.op_type in ("Softmax", "Transpose") for node in body)


def test_folded_attention_biases_give_the_same_vectors_with_fewer_passes() -> None:
    config, weights = tiny_config(), tiny_weights()
    assert np.abs(weights["encoder.layer.0.attention.self.value.bias"]).max() > 0.01
    input_ids, attention_mask = padded_batch(LENGTHS)
    options: dict[str, Any] = {"pooling": "mean", "normalize": False}
    standard = {"fused_attention": False, **options}
    folded = run_graph(config, weights, input_ids, attention_mask, **standard)
    unfolded = run_graph(
        config, weights, input_ids, attention_mask, fold_attention_biases=False, **standard
    )
    np.testing.assert_allclose(folded, unfolded, atol=1e-5, rtol=0)
    expected = bert_sentence_embeddings(config, weights, input_ids, attention_mask, **options)
    np.testing.assert_allclose(folded, expected, atol=1e-4, rtol=0)

    def adds(model: Any) -> int:
        loop = next(node for node in model.graph.node if node.op_type == "Loop")
        return sum(node.op_type == "Add" for node in loop.attribute[0].g.node)

    fewer = adds(build_bert_graph(config, weights, **standard)) - adds(
        build_bert_graph(config, weights, fold_attention_biases=False, **standard)
    )
    assert fewer == -2 * config["num_hidden_layers"]


@pytest.mark.parametrize("hidden_act", ["gelu_new", "gelu_pytorch_tanh", "relu"])
def test_other_activations_match_reference(hidden_act: str) -> None:
    config, weights = tiny_config(hidden_act), tiny_weights()
    input_ids, attention_mask = padded_batch(LENGTHS)
    options: dict[str, Any] = {"pooling": "mean", "normalize": False}
    actual = run_graph(config, weights, input_ids, attention_mask, **options)
    expected = bert_sentence_embeddings(config, weights, input_ids, attention_mask, **options)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("pooling", ["mean", "cls", "lasttoken"])
def test_padding_does_not_change_a_row(pooling: str) -> None:
    config, weights = tiny_config(), tiny_weights()
    options: dict[str, Any] = {"pooling": pooling, "normalize": True}
    batched = run_graph(config, weights, *padded_batch(LENGTHS, width=POSITIONS), **options)
    for row, length in enumerate(LENGTHS):
        input_ids, attention_mask = padded_batch(LENGTHS)
        alone_ids = input_ids[row : row + 1, :length]
        alone_mask = attention_mask[row : row + 1, :length]
        alone = run_graph(config, weights, alone_ids, alone_mask, **options)
        np.testing.assert_allclose(batched[row], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk_tokens", CHUNKINGS)
def test_empty_batch_gives_no_rows(chunk_tokens: int | None) -> None:
    empty = np.zeros((0, 5), dtype=np.int64)
    options: dict[str, Any] = {"pooling": "mean", "normalize": True, "chunk_tokens": chunk_tokens}
    vectors = run_graph(tiny_config(), tiny_weights(), empty, empty, **options)
    assert vectors.shape == (0, HIDDEN)


def test_graph_signature() -> None:
    model = build_bert_graph(tiny_config(), tiny_weights(), pooling="mean", normalize=True)
    inputs = {value.name: value.type.tensor_type for value in model.graph.input}
    (output,) = model.graph.output
    assert set(inputs) == {"input_ids", "attention_mask"}
    assert all(tensor.elem_type == 7 for tensor in inputs.values())  # int64
    assert output.name == "sentence_embedding"
    assert output.type.tensor_type.elem_type == 1  # float32
    assert [dim.dim_value for dim in output.type.tensor_type.shape.dim] == [0, HIDDEN]


def test_missing_tensor_is_named() -> None:
    weights = tiny_weights()
    del weights["encoder.layer.1.attention.self.key.bias"]
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.attention\.self\.key\.bias"):
        build_bert_graph(tiny_config(), weights, pooling="mean", normalize=True)


def test_misshaped_tensor_is_named() -> None:
    weights = tiny_weights("bert.")
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    weights[name] = weights[name].T.copy()
    with pytest.raises(ValueError, match=r"bert\.encoder\.layer\.0\.intermediate\.dense\.weight"):
        build_bert_graph(tiny_config(), weights, pooling="mean", normalize=True)


@pytest.mark.parametrize(
    ("key", "value"),
    [("hidden_act", "swish"), ("num_attention_heads", 5), ("hidden_size", None)],
)
def test_unsupported_config_is_refused(key: str, value: object) -> None:
    config = tiny_config() | {key: value}
    with pytest.raises(ValueError, match=key):
        build_bert_graph(config, tiny_weights(), pooling="mean", normalize=True)
