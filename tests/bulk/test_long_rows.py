"""Rows far past the model's limit: cut as the server cuts them, without tokenising megabytes
that truncation drops (a 50 MB line took 60 s and 6 GB of memory)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ember.bulk.tokens import tokenised
from ember.models.registry import ModelRegistry
from ember.models.tokenizer import TextTokenizer
from tests.bulk.conftest import FAKE_MODEL
from tests.support.models import WORDS

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


def tokenizer_of(models_dir: Path) -> TextTokenizer:
    entry = ModelRegistry(models_dir).find(FAKE_MODEL)
    assert entry.settings is not None
    return TextTokenizer(entry.folder / "tokenizer.json", entry.settings.ctx_len)


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


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_a_20_mb_line_costs_no_more_memory_than_a_short_one(
    tmp_path: Path, fake_models_dir: Path
) -> None:
    source = tmp_path / "input.txt"
    with source.open("w") as stream:
        stream.write("hello world\n" + "the lazy dog " * 1_600_000 + "\nlast line\n")
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
