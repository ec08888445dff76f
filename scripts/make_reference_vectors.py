"""Make reference vectors with sentence-transformers; run once in a torch venv, never in CI."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def sha256_of(path: Path) -> str:
    """Return the hex sha256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_texts(path: Path) -> list[str]:
    """Load a JSON list of non-empty strings."""
    texts = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(texts, list) or not all(isinstance(t, str) and t for t in texts):
        raise ValueError(f"{path} must hold a JSON list of non-empty strings")
    return texts


def seen_token_count(model: Any, text: str) -> int:
    """Tokens sentence-transformers feeds the model for ``text`` (after its truncation)."""
    tokenize = getattr(model, "preprocess", None) or model.tokenize  # tokenize: ST < 6
    return len(tokenize([text])["input_ids"][0])


def encode_one(model: Any, text: str) -> np.ndarray:
    """Encode a single text with the model's own modules; returns a float32 vector."""
    vector = model.encode([text], batch_size=1, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vector[0], dtype=np.float32)


def main() -> None:
    """Encode texts.json and long_texts.json one text at a time and write ``<model-id>.npz``.

    Usage: ``python scripts/make_reference_vectors.py --model-dir DIR --model-id ID``
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--out", type=Path, help="default: tests/fixtures/reference/ID.npz")
    parser.add_argument("--texts", type=Path, default=FIXTURES / "texts.json")
    parser.add_argument("--long-texts", type=Path, default=FIXTURES / "long_texts.json")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    model = SentenceTransformer(str(args.model_dir), device="cpu")
    max_len = int(model.max_seq_length)
    raw = Tokenizer.from_file(str(args.model_dir / "tokenizer.json"))
    raw.no_truncation()  # tokenizer.json ships with truncation and padding set to 128
    raw.no_padding()

    texts, long_texts = load_texts(args.texts), load_texts(args.long_texts)
    texts_counts = [seen_token_count(model, t) for t in texts]
    long_raw_counts = [len(raw.encode(t).ids) for t in long_texts]
    for text in texts + long_texts:  # ST's count must be tokenizer.json's, capped at max_len
        assert seen_token_count(model, text) == min(len(raw.encode(text).ids), max_len), text

    texts_emb = np.stack([encode_one(model, t) for t in texts])
    long_emb = np.stack([encode_one(model, t) for t in long_texts])
    for emb in (texts_emb, long_emb):
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    out: Path = args.out or FIXTURES / "reference" / f"{args.model_id}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    # Embeddings are unit-norm float32 [n, dim]; long ones are truncated at max_seq_length.
    np.savez_compressed(
        out,
        texts_embeddings=texts_emb,
        long_embeddings=long_emb,
        texts_token_counts=np.asarray(texts_counts, dtype=np.int64),
        long_token_counts_untruncated=np.asarray(long_raw_counts, dtype=np.int64),
        max_seq_length=np.int64(max_len),
        model_id=np.str_(args.model_id),
        weights_sha256=np.str_(sha256_of(args.model_dir / "model.safetensors")),
    )
    print(f"wrote {out}: texts {texts_emb.shape}, long {long_emb.shape}, max_seq_length {max_len}")


if __name__ == "__main__":
    main()
