"""Rows far past the model's limit: cut as the server cuts them, without tokenising megabytes
that truncation drops (a 50 MB line took 60 s and 6 GB of memory; 20 MB of Chinese or
base64, which have no spaces to cut before, 30-70 s and 3.4 GB)."""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from ember.bulk.tokens import head, tokenised
from ember.engines.base import TokenIds
from ember.models.registry import ModelRegistry
from ember.models.tokenizer import TextTokenizer
from tests.bulk.conftest import FAKE_MODEL
from tests.support.models import WORDS

MODEL = "all-MiniLM-L6-v2"

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, from the forking pytest process.
PEAK_RSS = """
import re, sys
from ember.cli import main
try:
    main(sys.argv[1:])
finally:
    status = open("/proc/self/status").read()
    print("peak_kib", re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1), file=sys.stderr)
"""


class RecordingTokenizer(TextTokenizer):
    """A model's tokenizer that notes the longest text it was given."""

    longest = 0

    def encode(self, texts: Sequence[str]) -> list[TokenIds]:
        self.longest = max(self.longest, *map(len, texts))
        return super().encode(texts)


def tokenizer_of(models_dir: Path, model_id: str = FAKE_MODEL) -> RecordingTokenizer:
    entry = ModelRegistry(models_dir).find(model_id)
    assert entry.settings is not None
    return RecordingTokenizer(entry.folder / "tokenizer.json", entry.settings.ctx_len)


def text_without_spaces(kind: str, chars: int) -> str:
    """`chars` characters of text with no space to cut before, as found on long lines."""
    rng = random.Random(kind)
    if kind == "chinese":
        return "".join(chr(rng.randrange(0x4E00, 0x9FA6)) for _ in range(chars))
    if kind == "japanese":  # kana runs between kanji and full stops
        return ("これは日本語の文章です。東京タワーへ行きましょう、" * chars)[:chars]
    if kind == "base64":
        return base64.b64encode(rng.randbytes(chars * 3 // 4 + 3)).decode()[:chars]
    if kind == "long-runs":  # a word piece model reads each run as one [UNK], not its pieces
        return (("東" * 300 + rng.randbytes(1000).hex() + "+") * chars)[:chars]
    pieces = [  # mixed: what minified pages and logs hold
        '{"id":17,"tags":["a","b"],"url":"https://example.com/path/to?q=1&r=two#frag"}',
        "東京タワー",
        base64.b64encode(rng.randbytes(300)).decode(),
        "naïve-café_résumé.",
    ]
    text = ""
    while len(text) < chars:
        text += rng.choice(pieces)
    return text[:chars]


WITHOUT_SPACES = ["chinese", "japanese", "base64", "long-runs", "mixed"]


def bpe_tokenizer(folder: Path, kind: str) -> RecordingTokenizer:
    """A small BPE tokenizer trained here, as GPT-2 (byte-level) or SentencePiece (metaspace)
    models split words, wrapped in <s> ... </s>."""
    if kind == "byte-level":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<s>", "</s>", "<unk>"], initial_alphabet=alphabet
    )
    corpus = [" ".join(WORDS)] * 20 + [text_without_spaces(kind, 3000) for kind in WITHOUT_SPACES]
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        special_tokens=[(name, tokenizer.token_to_id(name)) for name in ["<s>", "</s>"]],
    )
    path = folder / f"{kind}.json"
    tokenizer.save(str(path))
    return RecordingTokenizer(path, 64)


def assert_whole_text_ids(tokenizer: TextTokenizer, text: str) -> None:
    """tokenised() gives the ids of the whole text cut to the limit."""
    (whole,) = tokenizer.encode([text])
    (found,), truncated = tokenised([text], np.array([0]), tokenizer, truncate=True)
    assert truncated == (len(whole) > tokenizer.max_tokens)
    np.testing.assert_array_equal(found, tokenizer.truncate_ids(whole))


@pytest.mark.parametrize(
    "text",
    [
        " ".join(WORDS) * 40,
        "  ".join(WORDS) * 40 + " unknownwordsgalore" * 30,
        "x" * 5000 + " the dog",
        "the lazy " + "y" * 5000,
        " " * 3000 + "hello world " * 300,
    ],
    ids=["words", "double-spaces", "no-space-head", "long-last-word", "leading-spaces"],
)
def test_a_long_row_gets_the_ids_of_the_whole_text_truncated(
    fake_models_dir: Path, text: str
) -> None:
    tokenizer = tokenizer_of(fake_models_dir)
    (whole,) = tokenizer.encode([text])
    expected = tokenizer.truncate_ids(whole)
    (found,), truncated = tokenised([text], np.array([0]), tokenizer, truncate=True)
    assert truncated == (len(whole) > tokenizer.max_tokens)
    np.testing.assert_array_equal(found, expected)


def test_a_long_row_gets_the_default_models_ids_of_the_whole_text(
    default_models_dir: Path,
) -> None:
    entry = ModelRegistry(default_models_dir).find("all-MiniLM-L6-v2")
    assert entry.settings is not None
    tokenizer = TextTokenizer(entry.folder / "tokenizer.json", entry.settings.ctx_len)
    text = "Naïve café, 東京 — résumé!\tTabs\nand  spaces: https://example.com/a?b=c " * 400
    (whole,) = tokenizer.encode([text])
    (found,), truncated = tokenised([text], np.array([0]), tokenizer, truncate=True)
    assert truncated == 1
    np.testing.assert_array_equal(found, tokenizer.truncate_ids(whole))


@pytest.mark.parametrize("kind", WITHOUT_SPACES)
def test_text_without_spaces_is_cut_where_a_word_ends_with_the_whole_texts_ids(
    fake_models_dir: Path, default_models_dir: Path, kind: str
) -> None:
    # Cut only before a space, such text was tokenised whole however long it was.
    text = text_without_spaces(kind, 200_000)
    for tokenizer in [tokenizer_of(fake_models_dir), tokenizer_of(default_models_dir, MODEL)]:
        assert_whole_text_ids(tokenizer, text)
        tokenizer.longest = 0
        tokenised([text], np.array([0]), tokenizer, truncate=True)
        assert tokenizer.longest < 9 * 16 * tokenizer.max_tokens  # widened once at most


@pytest.mark.parametrize("tokenizer_kind", ["word-piece", "byte-level", "metaspace"])
@pytest.mark.parametrize("kind", WITHOUT_SPACES)
def test_a_head_is_cut_where_a_word_ends_so_its_ids_begin_the_whole_texts(
    tmp_path: Path, default_models_dir: Path, tokenizer_kind: str, kind: str
) -> None:
    # Exact, not only within the margin of ids a head must have to be trusted: a cut inside
    # a word changes that word's ids (word pieces for a run WordPiece reads as one [UNK]).
    if tokenizer_kind == "word-piece":
        tokenizer = tokenizer_of(default_models_dir, MODEL)
    else:
        tokenizer = bpe_tokenizer(tmp_path, tokenizer_kind)
    text = text_without_spaces(kind, 12_000)
    (whole,) = tokenizer.encode([text])
    for chars in range(100, 10_000, 337):
        cut = head(text, chars, tokenizer.word_spans)
        (ids,) = tokenizer.encode([cut])
        np.testing.assert_array_equal(ids[:-1], whole[: len(ids) - 1])  # but the closing id
        if tokenizer_kind == "word-piece":  # every such text has word ends before `chars`
            assert len(cut) <= chars + 16


@pytest.mark.parametrize("kind", ["byte-level", "metaspace"])
def test_bpe_tokenizers_get_the_whole_texts_ids_too(tmp_path: Path, kind: str) -> None:
    tokenizer = bpe_tokenizer(tmp_path, kind)
    spaced = " ".join(WORDS) * 100 + " " + text_without_spaces("mixed", 3000)
    for text in [spaced, *(text_without_spaces(shape, 30_000) for shape in WITHOUT_SPACES)]:
        assert_whole_text_ids(tokenizer, text)
        for at in range(0, len(text), 7919):  # texts split across many places
            assert_whole_text_ids(tokenizer, text[at:])


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
@pytest.mark.parametrize("kind", ["words", "chinese", "base64"])
def test_a_20_mb_line_costs_no_more_memory_than_a_short_one(
    tmp_path: Path, fake_models_dir: Path, kind: str
) -> None:
    if kind == "words":
        line = "the lazy dog " * 1_600_000
    elif kind == "chinese":  # 3 bytes a character: untruncated, 30 s and 3.4 GB (MiniLM)
        line = text_without_spaces(kind, 10_000) * 700
    else:  # base64: untruncated, 70 s and 3.4 GB (MiniLM)
        line = base64.b64encode(random.Random(kind).randbytes(15 * 2**20)).decode()
    source = tmp_path / "input.txt"
    with source.open("w") as stream:
        stream.write("hello world\n" + line + "\nlast line\n")
    output = tmp_path / "v.jsonl"
    args = ["embed", source, "-m", FAKE_MODEL, "-o", output, "--models-dir", fake_models_dir]
    run = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *map(str, args)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "Embedded 3 rows" in run.stdout
    assert "1 truncated" in run.stdout
    peak_mib = int(run.stderr.split("peak_kib")[-1]) / 1024
    assert peak_mib < 600  # untruncated, this line's tokens alone took ~2.5 GB
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [record["index"] for record in records] == [0, 1, 2]
