"""The GGUF engine as a demanding caller meets it: inputs at and past ctx_len, batches past one
llama.cpp batch, calls from many threads, calls after close, the model file changed under a
loaded model, against the ONNX graph of the same tiny model. Calls that crashed the process
run in a child process, so the crash is a failed assertion rather than a dead test run."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from ember.engines.base import TokenBatch, TokenIds
from ember.engines.gguf import load_gguf
from ember.engines.onnx import OnnxEngine
from ember.engines.onnx_graphs.bert import build_bert_graph
from ember.errors import EngineFailure
from tests.support.gguf_files import convert_folder, write_tiny_bert_folder

CTX_LEN = 64  # the tiny BERT's positions
# llama.cpp and ONNX Runtime both compute in float32, in different orders.
MIN_COSINE = 0.9999


@dataclass(frozen=True)
class TwinModels:
    """One tiny BERT as a GGUF file and as Ember's ONNX graph."""

    gguf: Path
    onnx: Path


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    if os.environ.get("EMBER_REQUIRE_GGUF") == "1":
        import llama_cpp

        return llama_cpp
    return pytest.importorskip("llama_cpp", reason="the gguf extra (llama-cpp-python) is absent")


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> TwinModels:
    folder = tmp_path_factory.mktemp("gguf-faults")
    source = write_tiny_bert_folder(folder / "tiny-bert", seed=21)
    graph = build_bert_graph(source.config, source.weights, pooling="mean", normalize=True)
    onnx.save(graph, folder / "model.onnx")
    return TwinModels(convert_folder(source.path, folder / "tiny-bert.gguf"), folder / "model.onnx")


def wrapped(rng: np.random.Generator, length: int, vocab: int) -> TokenIds:
    """`length` ids as [CLS] … [SEP] (ids 2 and 3 in the suite's vocabulary)."""
    body = rng.integers(5, vocab, size=length - 2)
    return np.concatenate([[2], body, [3]]).astype(np.int64)


def cosines(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.asarray((left * right).sum(axis=1))  # both normalised


def run_child(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120
    )


def test_boundaries_and_batches_past_one_llama_batch_match_onnx(
    llama_cpp: Any, twins: TwinModels
) -> None:
    """Sequences of exactly ctx_len, a batch of many times n_batch (= n_ubatch) tokens, and
    more sequences than llama.cpp's sequence limit in one call: the ONNX graph's vectors."""
    tokenizer, engine = load_gguf(
        twins.gguf, max_tokens=CTX_LEN, pooling="mean", normalize_output=True
    )
    reference = OnnxEngine(twins.onnx, pooling="mean", normalize_output=True, lanes=1)
    rng = np.random.default_rng(4)
    try:
        lengths = [CTX_LEN, CTX_LEN - 1, 2, CTX_LEN, 17, CTX_LEN, 3, CTX_LEN, 40, 2]
        batch = TokenBatch([wrapped(rng, n, tokenizer.vocab_size) for n in lengths])
        vectors = engine.embed(batch)
        assert vectors.shape == (len(lengths), 32)
        assert cosines(vectors, reference.embed(batch)).min() >= MIN_COSINE
        one_by_one = np.concatenate([engine.embed(TokenBatch([row])) for row in batch.sequences])
        np.testing.assert_allclose(vectors, one_by_one, atol=1e-6)
        assert engine.embed(TokenBatch([])).shape == (0, 32)
        with pytest.raises(EngineFailure, match=f"{CTX_LEN + 1} tokens exceeds ctx_len"):
            engine.embed(TokenBatch([wrapped(rng, CTX_LEN + 1, tokenizer.vocab_size)]))
    finally:
        engine.close()
    # A batch of 4096 tokens: 300 sequences of 2 (more than llama.cpp's 256 per decode).
    tokenizer, engine = load_gguf(
        twins.gguf, max_tokens=CTX_LEN, batch_tokens=4096, pooling="mean", normalize_output=True
    )
    try:
        many = TokenBatch([wrapped(rng, 2, tokenizer.vocab_size) for _ in range(300)])
        assert cosines(engine.embed(many), reference.embed(many)).min() >= MIN_COSINE
    finally:
        engine.close()


CONCURRENT_CALLS = """
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ember.engines.base import TokenBatch
from ember.engines.gguf import load_gguf

tokenizer, engine = load_gguf(Path(sys.argv[1]), max_tokens=64, pooling="mean",
                              normalize_output=True)
texts = [f"hello world the quick brown fox {i} " * (i % 5 + 1) for i in range(40)]
batches = [TokenBatch(tokenizer.encode([text, "dogs"])) for text in texts]
expected = [engine.embed(batch) for batch in batches]
with ThreadPoolExecutor(8) as pool:
    for _ in range(10):
        got = list(pool.map(engine.embed, batches))
        for vectors, want in zip(got, expected, strict=True):
            np.testing.assert_allclose(vectors, want, atol=1e-6)
        list(pool.map(tokenizer.encode, [texts] * 8))
engine.close()
print("ok")
"""


def test_calls_from_many_threads_take_turns(llama_cpp: Any, twins: TwinModels) -> None:
    """The engine says one lane, but a caller on many threads got the process aborted
    (GGML_ASSERT in llama.cpp, two decodes on one context); now they take turns."""
    finished = run_child(CONCURRENT_CALLS, str(twins.gguf))
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.strip() == "ok"


AFTER_CLOSE = """
import sys
from pathlib import Path

from ember.engines.base import TokenBatch
from ember.engines.gguf import load_gguf
from ember.errors import EngineFailure

tokenizer, engine = load_gguf(Path(sys.argv[1]), max_tokens=64, pooling="mean",
                              normalize_output=True)
ids = tokenizer.encode(["hello world"])
engine.close()
engine.close()
for call in (lambda: engine.embed(TokenBatch(ids)), lambda: tokenizer.encode(["hello"]),
             lambda: tokenizer.decode([2, 12, 3])):
    try:
        call()
    except EngineFailure as exc:
        print(exc)
"""


def test_calls_after_close_raise_engine_failure(llama_cpp: Any, twins: TwinModels) -> None:
    """Closing twice is harmless; embedding or tokenising after close read freed memory
    (a segfault): now each raises EngineFailure, which the server answers by reloading."""
    finished = run_child(AFTER_CLOSE, str(twins.gguf))
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.splitlines() == ["the llama.cpp model is closed"] * 3


FILE_CHANGED_UNDER_IT = """
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ember.engines.base import TokenBatch
from ember.engines.gguf import load_gguf

path = Path(sys.argv[2])
shutil.copy(sys.argv[1], path)
tokenizer, engine = load_gguf(path, max_tokens=64, pooling="mean", normalize_output=True)
ids = tokenizer.encode(["hello world", "the quick brown fox"])
before = engine.embed(TokenBatch(ids))
os.truncate(path, 1000)  # as `cp other.gguf model.gguf` does first
np.testing.assert_array_equal(engine.embed(TokenBatch(ids)), before)
path.write_bytes(b"\\0" * 100_000)  # rewritten in place
np.testing.assert_array_equal(engine.embed(TokenBatch(ids)), before)
path.unlink()
np.testing.assert_array_equal(engine.embed(TokenBatch(ids)), before)
engine.close()
print("ok")
"""


def test_a_model_file_changed_after_load_changes_nothing(
    llama_cpp: Any, twins: TwinModels, tmp_path: Path
) -> None:
    """llama.cpp mapped the file: truncated under a loaded model, the next call killed the
    process with SIGBUS (the whole server), and rewritten in place it changed the vectors."""
    finished = run_child(FILE_CHANGED_UNDER_IT, str(twins.gguf), str(tmp_path / "copy.gguf"))
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.strip() == "ok"


def test_empty_sequences_get_zero_rows_as_on_onnx(llama_cpp: Any, twins: TwinModels) -> None:
    """An empty token list failed the whole batch ('no pooled vector', or llama_decode -1 when
    all were empty), an engine fault the server answers by reloading the model; the ONNX
    engines pool it to a zero row."""
    tokenizer, engine = load_gguf(
        twins.gguf, max_tokens=CTX_LEN, pooling="mean", normalize_output=True
    )
    reference = OnnxEngine(twins.onnx, pooling="mean", normalize_output=True, lanes=1)
    empty = np.array([], dtype=np.int64)
    try:
        batch = TokenBatch([empty, *tokenizer.encode(["hello world"]), empty])
        vectors = engine.embed(batch)
        np.testing.assert_array_equal(vectors[[0, 2]], 0.0)
        assert cosines(vectors[1:2], reference.embed(batch)[1:2]).min() >= MIN_COSINE
        np.testing.assert_array_equal(reference.embed(batch)[[0, 2]], 0.0)
        np.testing.assert_array_equal(engine.embed(TokenBatch([empty, empty])), 0.0)
        assert engine.embed(TokenBatch([empty])).shape == (1, 32)
    finally:
        engine.close()


PAST_CTX_LEN = """
import sys
from pathlib import Path

import numpy as np

from ember.engines.base import TokenBatch
from ember.engines.gguf import load_gguf
from ember.errors import EngineFailure

tokenizer, engine = load_gguf(Path(sys.argv[1]), max_tokens=64, batch_tokens=512,
                              pooling="mean", normalize_output=True)
for length in (65, 300):
    ids = np.concatenate([[2], np.full(length - 2, 12), [3]]).astype(np.int64)
    try:
        engine.embed(TokenBatch([tokenizer.encode(["hello"])[0], ids]))
    except EngineFailure as exc:
        print(exc)
print(engine.embed(TokenBatch(tokenizer.encode(["hello"]))).shape)
"""


def test_a_sequence_past_ctx_len_is_refused_when_the_batch_is_larger(
    llama_cpp: Any, twins: TwinModels
) -> None:
    """With ubatch_size above ctx_len (its default is 512), the engine took any sequence
    that fit the batch, and past BERT's 64 learned positions llama.cpp aborted the process;
    it is refused by ctx_len, and the engine goes on serving."""
    finished = run_child(PAST_CTX_LEN, str(twins.gguf))
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.splitlines() == [
        "a sequence of 65 tokens exceeds ctx_len 64",
        "a sequence of 300 tokens exceeds ctx_len 64",
        "(1, 32)",
    ]
