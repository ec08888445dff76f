"""Compare Ember's BERT graph with sentence-transformers on a real model (needs torch).

Run with an interpreter that has torch and sentence-transformers as well as onnxruntime, e.g.
`/work/refenv/bin/python scripts/check_graph_against_st.py [--model DIR]`. Exits 1 if any
text's cosine similarity to sentence-transformers' vector is below --min-cosine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from safetensors.numpy import load_file
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ember.engines.onnx_graphs.bert import Pooling, build_bert_graph

DEFAULT_MODEL = Path("/work/cache/models/all-MiniLM-L6-v2")
TEXTS = [
    "Hi",
    "a",
    "",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "How do I reset my password if I no longer have access to my email?",
    "I can't believe it's already December — where did the year go?!",
    "Ünïcödé façade, naïve café, smörgåsbord and São Paulo.",
    "東京は日本の首都です。",
    "Привет, как дела?",
    "🙂🚀 emoji-only messages 🎉🎉",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "https://example.com/path?query=1&other=two#fragment",
    "3.14159 2.71828 1.41421 1.73205 0.57721",
    "    lots   of   odd   whitespace\t\tand\ttabs   ",
    "UPPERCASE TEXT SHOULD BE LOWERCASED BY THE UNCASED TOKENIZER",
    " ".join(["A long passage that repeats itself to pass the 128-token limit."] * 14),
    " ".join(f"word{index}" for index in range(400)),
    "Photosynthesis converts light energy into chemical energy stored in glucose. " * 6,
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--min-cosine", type=float, default=0.9999)
    parser.add_argument("--fused", action="store_true", help="use com.microsoft operators")
    args = parser.parse_args()
    model_dir: Path = args.model

    pooling, normalize, max_length = read_sentence_transformers_config(model_dir)
    input_ids, attention_mask = tokenize(model_dir, TEXTS, max_length)
    ours = run_graph(model_dir, input_ids, attention_mask, pooling, normalize, fused=args.fused)
    theirs = run_sentence_transformers(model_dir, TEXTS, input_ids)

    cosines = np.sum(ours * theirs, axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    )
    worst = int(np.argmin(cosines))
    print(
        f"model {model_dir.name}: pooling={pooling} normalize={normalize} "
        f"max_len={max_length} fused={args.fused}"
    )
    print(f"texts {len(TEXTS)}, tokens per text {attention_mask.sum(axis=1).tolist()}")
    print(f"max abs diff {np.abs(ours - theirs).max():.3e}")
    print(f"min cosine {cosines[worst]:.8f} (text {worst}: {TEXTS[worst][:40]!r})")
    return 0 if cosines[worst] >= args.min_cosine else 1


def read_sentence_transformers_config(model_dir: Path) -> tuple[Pooling, bool, int]:
    """Pooling mode, whether a Normalize module follows, and max_seq_length."""
    modules = json.loads((model_dir / "modules.json").read_text())
    normalize = any(module["type"].endswith("Normalize") for module in modules)
    pooling_dir = next(module["path"] for module in modules if module["type"].endswith("Pooling"))
    pooling_config = json.loads((model_dir / pooling_dir / "config.json").read_text())
    modes: dict[str, Pooling] = {
        "pooling_mode_mean_tokens": "mean",
        "pooling_mode_cls_token": "cls",
        "pooling_mode_lasttoken": "lasttoken",
    }
    pooling = next(mode for key, mode in modes.items() if pooling_config.get(key))
    st_config = json.loads((model_dir / "sentence_bert_config.json").read_text())
    return pooling, normalize, int(st_config["max_seq_length"])


def tokenize(
    model_dir: Path, texts: list[str], max_length: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Right-padded ids and mask; the file's own truncation (128) is replaced by max_length."""
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    encodings = tokenizer.encode_batch(texts)
    width = max(len(encoding.ids) for encoding in encodings)
    input_ids = np.zeros((len(texts), width), dtype=np.int64)
    attention_mask = np.zeros_like(input_ids)
    for row, encoding in enumerate(encodings):
        input_ids[row, : len(encoding.ids)] = encoding.ids
        attention_mask[row, : len(encoding.ids)] = 1
    return input_ids, attention_mask


def run_graph(
    model_dir: Path,
    input_ids: npt.NDArray[np.int64],
    attention_mask: npt.NDArray[np.int64],
    pooling: Pooling,
    normalize: bool,
    *,
    fused: bool,
) -> npt.NDArray[np.float32]:
    config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    weights = load_file(str(model_dir / "model.safetensors"))
    model = build_bert_graph(config, weights, pooling=pooling, normalize=normalize, fused=fused)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
    return np.asarray(session.run(["sentence_embedding"], feeds)[0])


def run_sentence_transformers(
    model_dir: Path, texts: list[str], input_ids: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    """sentence-transformers' vectors, after checking that it sees the same token ids."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    features = model.preprocess(texts)
    theirs = features["input_ids"].numpy()
    ours = input_ids[:, : theirs.shape[1]]
    if ours.shape != theirs.shape or not np.array_equal(ours * (theirs != 0), theirs):
        raise SystemExit("sentence-transformers tokenised the texts differently")
    return np.asarray(model.encode(texts, batch_size=8, convert_to_numpy=True))


if __name__ == "__main__":
    raise SystemExit(main())
