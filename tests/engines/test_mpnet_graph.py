"""The MPNet graph on a tiny random checkpoint, against the numpy reference forward pass."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest

from ember.engines.onnx_graphs.bert import Pooling
from ember.engines.onnx_graphs.mpnet import build_mpnet_graph, relative_position_buckets
from tests.reference_forward.mpnet import PAD_ID, mpnet_sentence_embeddings

CONFIG: dict[str, Any] = {
    "model_type": "mpnet",
    "hidden_size": 32,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "intermediate_size": 64,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "vocab_size": 40,
    # 200 usable positions: enough for distances past max_distance (128), where buckets saturate.
    "max_position_embeddings": 202,
    "relative_attention_num_buckets": 32,
    "pad_token_id": 1,
}
# A short, a one-token, a medium and a long row: padding and every kind of bucket in one batch.
LENGTHS = (7, 1, 19, 150)
Weights = dict[str, npt.NDArray[Any]]


def random_weights(seed: int = 0) -> Weights:
    """A checkpoint with all-mpnet-base-v2's tensor names (buffers and pooler included)."""
    rng = np.random.default_rng(seed)
    hidden, inner = CONFIG["hidden_size"], CONFIG["intermediate_size"]

    def normal(*shape: int, scale: float = 0.2) -> npt.NDArray[np.float32]:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(name: str) -> Weights:
        return {f"{name}.weight": 1.0 + normal(hidden, scale=0.1), f"{name}.bias": normal(hidden)}

    weights: Weights = {
        "embeddings.word_embeddings.weight": normal(CONFIG["vocab_size"], hidden, scale=1.0),
        "embeddings.position_embeddings.weight": normal(
            CONFIG["max_position_embeddings"], hidden, scale=1.0
        ),
        "embeddings.position_ids": np.arange(CONFIG["max_position_embeddings"])[None],
        **norm("embeddings.LayerNorm"),
        # Large enough that a wrong bucket or a transposed table shows in the output.
        "encoder.relative_attention_bias.weight": normal(
            32, CONFIG["num_attention_heads"], scale=2
        ),
        "pooler.dense.weight": normal(hidden, hidden),
        "pooler.dense.bias": normal(hidden),
    }
    for index in range(CONFIG["num_hidden_layers"]):
        prefix = f"encoder.layer.{index}."
        for part in "qkvo":
            weights[f"{prefix}attention.attn.{part}.weight"] = normal(hidden, hidden)
            weights[f"{prefix}attention.attn.{part}.bias"] = normal(hidden)
        weights.update(norm(prefix + "attention.LayerNorm"))
        weights[prefix + "intermediate.dense.weight"] = normal(inner, hidden)
        weights[prefix + "intermediate.dense.bias"] = normal(inner)
        weights[prefix + "output.dense.weight"] = normal(hidden, inner)
        weights[prefix + "output.dense.bias"] = normal(hidden)
        weights.update(norm(prefix + "output.LayerNorm"))
    return weights


def padded_batch(
    lengths: tuple[int, ...], pad_id: int, seed: int = 1
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """<s> words </s> rows, right-padded with `pad_id`; words never use the <pad> id."""
    rng = np.random.default_rng(seed)
    input_ids = np.full((len(lengths), max(lengths)), pad_id, dtype=np.int64)
    mask = np.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = rng.integers(3, CONFIG["vocab_size"], length)
        input_ids[row, 0] = 0
        input_ids[row, length - 1] = 2
        mask[row, :length] = 1
    return input_ids, mask


def run(
    model: onnx.ModelProto, input_ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]
) -> Any:
    """The graph's output with every ONNX Runtime optimisation on, as the engine runs it."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(["sentence_embedding"], {"input_ids": input_ids, "attention_mask": mask})[0]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "standard"])
@pytest.mark.parametrize(("pooling", "normalize"), [("mean", True), ("mean", False), ("cls", True)])
def test_graph_matches_reference(fused: bool, pooling: Pooling, normalize: bool) -> None:
    weights = random_weights()
    model = build_mpnet_graph(CONFIG, weights, pooling=pooling, normalize=normalize, fused=fused)
    input_ids, mask = padded_batch(LENGTHS, PAD_ID)
    expected = mpnet_sentence_embeddings(
        CONFIG, weights, input_ids, mask, pooling=pooling, normalize=normalize
    )
    got = run(model, input_ids, mask)
    assert got.shape == (len(LENGTHS), CONFIG["hidden_size"])
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "standard"])
def test_rows_do_not_depend_on_padding_or_pad_id(fused: bool) -> None:
    model = build_mpnet_graph(CONFIG, random_weights(), pooling="mean", normalize=True, fused=fused)
    batched_with_pad, mask = padded_batch(LENGTHS, pad_id=PAD_ID)
    batched_with_zero, _ = padded_batch(LENGTHS, pad_id=0)
    with_pad = run(model, batched_with_pad, mask)
    assert np.array_equal(with_pad, run(model, batched_with_zero, mask))
    for row, length in enumerate(LENGTHS):
        single = run(model, batched_with_pad[row : row + 1, :length], mask[row : row + 1, :length])
        assert np.abs(single[0] - with_pad[row]).max() < 1e-5


def test_prefixed_checkpoint_gives_the_same_graph_output() -> None:
    weights = random_weights()
    prefixed = {f"mpnet.{name}": tensor for name, tensor in weights.items()}
    prefixed["lm_head.bias"] = np.zeros(CONFIG["vocab_size"], dtype=np.float32)
    input_ids, mask = padded_batch(LENGTHS, PAD_ID)
    plain = run(build_mpnet_graph(CONFIG, weights, pooling="mean", normalize=True), input_ids, mask)
    again = run(
        build_mpnet_graph(CONFIG, prefixed, pooling="mean", normalize=True), input_ids, mask
    )
    assert np.array_equal(plain, again)


def test_bucket_table_matches_hugging_face() -> None:
    # MPNetEncoder.relative_position_bucket(key - query), computed with torch.
    expected = {-200: 15, -128: 15, -127: 15, -64: 14, -20: 10, -12: 9, -9: 8, -8: 8, -7: 7}
    expected |= {-1: 1, 0: 0, 1: 17, 7: 23, 8: 24, 9: 24, 12: 25, 20: 26, 64: 30, 127: 31}
    expected |= {128: 31, 200: 31}
    table = relative_position_buckets(260)
    assert table.shape == (260, 260)
    for distance, bucket in expected.items():
        query = max(0, -distance)
        assert table[query, query + distance] == bucket, distance
        assert table[query + 30, query + 30 + distance] == bucket, distance


def test_missing_tensor_is_named() -> None:
    weights = random_weights()
    del weights["encoder.relative_attention_bias.weight"]
    with pytest.raises(ValueError, match="relative_attention_bias"):
        build_mpnet_graph(CONFIG, weights, pooling="mean", normalize=True)


def test_too_few_buckets_are_refused() -> None:
    config = {**CONFIG, "relative_attention_num_buckets": 16}
    with pytest.raises(ValueError, match="relative_attention_num_buckets"):
        build_mpnet_graph(config, random_weights(), pooling="mean", normalize=True)
