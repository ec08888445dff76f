"""`ember embed` killed by SIGKILL mid-run, then resumed: every row once, as the server says."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openai

from ember.bulk.checkpoint import checkpoint_path, read_checkpoint
from ember.settings import ServerSettings
from tests.support.models import WORDS
from tests.support.process import ember_process
from tests.support.server import serve_in_thread

MODEL = "all-MiniLM-L6-v2"
ROWS = 10_000
KILL_AFTER = 3_000


def short_text(row: int) -> str:
    """Short, distinct lines (a few tokens each) so 10,000 rows embed in seconds."""
    return f"{WORDS[row % len(WORDS)]} {WORDS[row * 7 % len(WORDS)]} {row}"


def test_killed_run_resumes_without_losing_or_repeating_a_row(
    tmp_path: Path, default_models_dir: Path
) -> None:
    texts = [short_text(row) for row in range(ROWS)]
    source = tmp_path / "input.txt"
    source.write_text("\n".join(texts) + "\n")
    output = tmp_path / "vectors.jsonl"
    saved_at = checkpoint_path(output)
    args = [
        "embed", str(source), "-m", MODEL, "-o", str(output),
        "--models-dir", str(default_models_dir), "--chunk-rows", "500",
    ]  # fmt: skip

    log = tmp_path / "first.log"
    with ember_process(*args, log=log) as process:
        deadline = time.monotonic() + 120
        while (saved := read_checkpoint(saved_at)) is None or saved.rows_done < KILL_AFTER:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no progress within 120 s"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=20) == -signal.SIGKILL
    killed_at = read_checkpoint(saved_at)
    assert killed_at is not None
    assert KILL_AFTER <= killed_at.rows_done < ROWS
    assert not output.exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "ember", *args], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after row {killed_at.rows_done:,}" in resumed.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "first.log",
        "input.txt",
        "vectors.jsonl",
    ]

    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [record["index"] for record in records] == list(range(ROWS))
    vectors = np.array([record["embedding"] for record in records], dtype=np.float32)
    assert vectors.shape == (ROWS, 384)

    sample = np.linspace(0, ROWS - 1, 200).astype(int)
    settings = ServerSettings(home=tmp_path / "home", models_dir=default_models_dir)
    with serve_in_thread(settings) as server:
        client = openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0)
        response = client.embeddings.create(model=MODEL, input=[texts[row] for row in sample])
    served = np.array([item.embedding for item in response.data], dtype=np.float32)
    cosines = np.sum(served * vectors[sample], axis=1)
    assert cosines.min() >= 0.9999
