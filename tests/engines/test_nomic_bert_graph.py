"""The Nomic-BERT graph against an independent numpy forward pass, on tiny generated weights."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest

from ember.engines.onnx_graphs.nomic_bert import build_nomic_bert_graph, default_settings
from tests.reference_forward.nomic_bert import nomic_sentence_embeddings
from tests.support.nomic import tiny_nomic_config, tiny_nomic_weights

TOLERANCE = 1e-4
LENGTHS = [11, 1, 7, 16, 3]  # mixed, right-padded to 16; one row of a lone token


def padded_batch(seed: int = 0) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    width = max(LENGTHS)
    mask = (np.arange(width)[None, :] < np.array(LENGTHS)[:, None]).astype(np.int64)
    ids = rng.integers(1, 25, size=(len(LENGTHS), width)) * mask  # pad id 0
    return ids.astype(np.int64), mask


def run_graph(
    model: onnx.ModelProto, ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]
) -> Any:
    """With the engine's optimisation level, so ORT's own fusions are covered too."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    (output,) = session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})
    return output


@pytest.mark.parametrize(
    ("pooling", "normalize", "fused"),
    list(itertools.product(["mean", "cls", "lasttoken"], [True, False], [True, False])),
)
def test_graph_matches_reference(pooling: Any, normalize: bool, fused: bool) -> None:
    config = tiny_nomic_config()
    weights = tiny_nomic_weights(config, seed=1)
    ids, mask = padded_batch()
    graph = build_nomic_bert_graph(
        config, weights, pooling=pooling, normalize=normalize, fused=fused
    )
    output = run_graph(graph, ids, mask)
    expected = nomic_sentence_embeddings(
        config, weights, ids, mask, pooling=pooling, normalize=normalize
    )
    assert output.dtype == np.float32
    assert output.shape == (len(LENGTHS), config["n_embd"])
    assert np.abs(output - expected).max() < TOLERANCE


VARIANTS: dict[str, dict[str, Any]] = {
    # Biases on everywhere (NomicBertConfig's defaults) and GPT-J style pairs.
    "biases_interleaved": {
        "qkv_proj_bias": True,
        "mlp_fc1_bias": True,
        "mlp_fc2_bias": True,
        "rotary_emb_interleaved": True,
    },
    "partial_rotary": {"rotary_emb_fraction": 0.5},
    # Dynamic NTK (rotary_scaling_factor, as the model card passes for > 2048 tokens), made to
    # engage at 5 tokens so that rows on both sides of the threshold are in the batch.
    "dynamic_ntk": {"rotary_scaling_factor": 2.0, "max_trained_positions": 5},
    # n_inner 64 stays as written for a plain MLP; learned positions when there is no rotary.
    "gelu_learned_positions": {
        "activation_function": "gelu",
        "n_inner": 64,
        "rotary_emb_fraction": 0.0,
        "n_positions": 32,
    },
    # The gated MLP rounds n_inner 64 up to 256, and its weights have that width.
    "geglu_rounded_width": {"activation_function": "geglu", "n_inner": 64},
    "glu": {"activation_function": "glu"},
    "no_token_types": {"type_vocab_size": 0},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("fused", [True, False])
def test_config_variants_match_reference(variant: str, fused: bool) -> None:
    config = tiny_nomic_config(**VARIANTS[variant])
    weights = tiny_nomic_weights(config, seed=2)
    ids, mask = padded_batch(seed=3)
    graph = build_nomic_bert_graph(config, weights, pooling="mean", normalize=True, fused=fused)
    expected = nomic_sentence_embeddings(config, weights, ids, mask, pooling="mean", normalize=True)
    assert np.abs(run_graph(graph, ids, mask) - expected).max() < TOLERANCE


@pytest.mark.parametrize("prefix", ["bert.", "model."])
def test_prefixed_tensor_names(prefix: str) -> None:
    """NomicBertForPreTraining checkpoints (nomic-bert-2048) name everything `bert.…`."""
    config = tiny_nomic_config()
    weights = tiny_nomic_weights(config, seed=4, prefix=prefix)
    weights[prefix.replace("bert", "cls") + "predictions.decoder.bias"] = np.zeros(64, np.float32)
    ids, mask = padded_batch()
    graph = build_nomic_bert_graph(config, weights, pooling="mean", normalize=True)
    expected = nomic_sentence_embeddings(config, weights, ids, mask, pooling="mean", normalize=True)
    assert np.abs(run_graph(graph, ids, mask) - expected).max() < TOLERANCE


def test_tiny_model_tells_the_facts_apart() -> None:
    """The agreement above means something: each wrong reading moves the vectors visibly."""
    config = tiny_nomic_config()
    weights = tiny_nomic_weights(config, seed=1)
    ids, mask = padded_batch()

    def vectors(changed_config: dict[str, Any], changed_weights: dict[str, Any]) -> Any:
        return nomic_sentence_embeddings(
            changed_config, changed_weights, ids, mask, pooling="mean", normalize=True
        )

    right = vectors(config, weights)
    swapped = dict(weights)
    for index in range(config["n_layer"]):
        up, gate = (
            f"encoder.layers.{index}.mlp.fc11.weight",
            f"encoder.layers.{index}.mlp.fc12.weight",
        )
        swapped[up], swapped[gate] = weights[gate], weights[up]
    wrong_readings = [
        vectors(tiny_nomic_config(rotary_emb_base=10_000), weights),
        vectors(tiny_nomic_config(rotary_emb_interleaved=True), weights),
        vectors(
            tiny_nomic_config(rotary_emb_fraction=0.0),
            {**weights, "embeddings.position_embeddings.weight": np.zeros((8192, 32))},
        ),
        vectors(config, swapped),
    ]
    for wrong in wrong_readings:
        assert np.abs(wrong - right).max() > 100 * TOLERANCE


def test_batching_does_not_change_a_row() -> None:
    config = tiny_nomic_config(rotary_scaling_factor=2.0, max_trained_positions=5)
    weights = tiny_nomic_weights(config, seed=5)
    ids, mask = padded_batch()
    graph = build_nomic_bert_graph(config, weights, pooling="mean", normalize=True)
    batched = run_graph(graph, ids, mask)
    for row, length in enumerate(LENGTHS):
        alone = run_graph(graph, ids[row : row + 1, :length], mask[row : row + 1, :length])
        assert np.abs(alone[0] - batched[row]).max() < 1e-5


def test_long_rows_with_heavy_padding() -> None:
    config = tiny_nomic_config()
    weights = tiny_nomic_weights(config, seed=6)
    lengths = [300, 37]
    mask = (np.arange(300)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    ids = np.random.default_rng(6).integers(1, 25, size=mask.shape) * mask
    graph = build_nomic_bert_graph(config, weights, pooling="mean", normalize=True)
    expected = nomic_sentence_embeddings(config, weights, ids, mask, pooling="mean", normalize=True)
    assert np.abs(run_graph(graph, ids, mask) - expected).max() < TOLERANCE


def test_fused_attention_gets_no_mask() -> None:
    """A mask input makes ORT's CPU kernel build every [seq, seq] score matrix; without one
    it runs flash attention (at 8192 tokens: gigabytes less, several times faster)."""
    config = tiny_nomic_config()
    graph = build_nomic_bert_graph(
        config, tiny_nomic_weights(config, seed=0), pooling="mean", normalize=True
    )
    attention = [node for node in graph.graph.node if node.op_type == "MultiHeadAttention"]
    assert len(attention) == config["n_layer"]
    assert all(len(node.input) == 3 for node in attention)


def test_graph_interface() -> None:
    config = tiny_nomic_config()
    graph = build_nomic_bert_graph(
        config, tiny_nomic_weights(config, seed=0), pooling="mean", normalize=True, fused=False
    )
    inputs = {value.name: value.type.tensor_type.elem_type for value in graph.graph.input}
    assert inputs == {"input_ids": onnx.TensorProto.INT64, "attention_mask": onnx.TensorProto.INT64}
    (output,) = graph.graph.output
    assert output.name == "sentence_embedding"
    assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # Unfused graphs run on any ONNX runtime: standard operators only.
    assert {node.domain for node in graph.graph.node} == {""}


def test_missing_tensor_is_named() -> None:
    config = tiny_nomic_config()
    weights = tiny_nomic_weights(config, seed=0)
    del weights["encoder.layers.1.mlp.fc12.weight"]
    with pytest.raises(ValueError, match=r"encoder\.layers\.1\.mlp\.fc12\.weight"):
        build_nomic_bert_graph(config, weights, pooling="mean", normalize=True)


def test_bias_the_config_promises_is_required() -> None:
    """NomicBertConfig defaults qkv_proj_bias to True: a config that omits it means biases."""
    config = tiny_nomic_config()
    del config["qkv_proj_bias"]
    with pytest.raises(ValueError, match=r"encoder\.layers\.0\.attn\.Wqkv\.bias"):
        build_nomic_bert_graph(
            config, tiny_nomic_weights(tiny_nomic_config(), seed=0), pooling="mean", normalize=True
        )


def test_misshaped_tensor_is_named() -> None:
    config = tiny_nomic_config()
    weights = tiny_nomic_weights(config, seed=0)
    weights["encoder.layers.0.attn.Wqkv.weight"] = np.zeros((64, 32), np.float32)
    with pytest.raises(ValueError, match=r"Wqkv\.weight.*\(64, 32\).*\(96, 32\)"):
        build_nomic_bert_graph(config, weights, pooling="mean", normalize=True)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prenorm": True}, "prenorm"),
        ({"moe_every_n_layers": 2, "num_experts": 8}, "mixture-of-experts"),
        ({"activation_function": "relu"}, "activation_function"),
        ({"n_embd": None}, "n_embd"),
        ({"n_head": 5}, "multiple of n_head"),
        ({"rotary_emb_fraction": 0.3}, "rotary_emb_fraction"),
        ({"rotary_emb_scale_base": 512}, "rotary_emb_scale_base"),
    ],
)
def test_unsupported_configs_are_refused(changes: dict[str, Any], message: str) -> None:
    weights = tiny_nomic_weights(tiny_nomic_config(), seed=0)
    with pytest.raises(ValueError, match=message):
        build_nomic_bert_graph(
            tiny_nomic_config(**changes), weights, pooling="mean", normalize=True
        )


def test_bert_style_config_keys_are_read() -> None:
    """Configs re-saved by newer transformers carry hidden_size & co. beside (or for) n_embd."""
    renamed = {
        "n_embd": "hidden_size",
        "n_head": "num_attention_heads",
        "n_layer": "num_hidden_layers",
    }
    config = tiny_nomic_config()
    for old, new in renamed.items():
        config[new] = config.pop(old)
    weights = tiny_nomic_weights(tiny_nomic_config(), seed=0)
    ids, mask = padded_batch()
    graph = build_nomic_bert_graph(config, weights, pooling="mean", normalize=True)
    expected = nomic_sentence_embeddings(
        tiny_nomic_config(), weights, ids, mask, pooling="mean", normalize=True
    )
    assert np.abs(run_graph(graph, ids, mask) - expected).max() < TOLERANCE


def test_default_settings_of_nomic_embed_text_v1_5() -> None:
    config = tiny_nomic_config(n_embd=768, n_head=12, n_layer=12, n_inner=3072, vocab_size=30528)
    settings = default_settings(config)
    assert settings["ctx_len"] == 8192
    assert settings["dimensions"] == 768
    assert settings["matryoshka_dimensions"] == [512, 256, 128, 64]
    assert settings["prompts"] == {
        "search_query": "search_query: ",
        "search_document": "search_document: ",
        "clustering": "clustering: ",
        "classification": "classification: ",
    }


def test_default_settings_claim_no_matryoshka_for_other_widths() -> None:
    settings = default_settings(tiny_nomic_config())
    assert settings["dimensions"] == 32
    assert "matryoshka_dimensions" not in settings
