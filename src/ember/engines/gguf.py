"""llama.cpp engine for GGUF embedding models (Jan's and llama.cpp's format), an optional extra."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ember.engines.base import TokenBatch, TokenIds, Vectors
from ember.engines.cores import available_cores
from ember.errors import EngineFailure, ModelLoadFailed, RuntimeMissing
from ember.pooling import Pooling, normalize
from ember.special_tokens import SpecialTokens

if TYPE_CHECKING:
    from ember.engines.base import Engine, ModelTokenizer

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'ember-embeddings[gguf]'"

# llama.cpp's enum llama_pooling_type.
POOLING_TYPES: dict[Pooling, int] = {"mean": 1, "cls": 2, "lasttoken": 3}

# Architectures whose positions are a learned table: inputs past it would read out of bounds.
LEARNED_POSITIONS = frozenset({"bert"})


def load_gguf(
    model_path: Path,
    *,
    max_tokens: int,
    pooling: Pooling,
    normalize_output: bool,
    gpu_layers: int = 0,
    batch_tokens: int | None = None,
    threads: int | None = None,
) -> tuple[ModelTokenizer, Engine]:
    """Open a GGUF model with llama.cpp: its own tokenizer and an engine sharing one instance.

    Raises RuntimeMissing when llama-cpp-python is not installed, so the server answers 501
    for this model and keeps serving the others. `batch_tokens` sizes one llama.cpp batch
    (default `max_tokens`); it never drops below `max_tokens`, because llama.cpp must see a
    whole sequence in one micro-batch when attention is bidirectional.
    """
    llama_cpp = _import_llama_cpp()
    if gpu_layers > 0 and not llama_cpp.llama_supports_gpu_offload():
        log.warning(
            "ngl=%d asks for a GPU, but this llama.cpp build has none: running on CPU", gpu_layers
        )
    batch_size = max(max_tokens, batch_tokens or 0)
    cores = threads or available_cores()
    try:
        llama = llama_cpp.Llama(
            str(model_path),
            embedding=True,
            n_ctx=batch_size,
            n_batch=batch_size,
            n_ubatch=batch_size,
            n_gpu_layers=gpu_layers,
            pooling_type=POOLING_TYPES[pooling],
            n_threads=cores,
            n_threads_batch=cores,
            # Read the weights in rather than map the file: a mapped file truncated while
            # loaded (`cp` over it truncates it first) killed the whole server with SIGBUS
            # at its next call, and one rewritten in place changed its vectors silently.
            # Resident memory is the same; the pages are the process's own, not the cache's.
            use_mmap=False,
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        # llama-cpp-python quotes the full path; name the file only, never where the data is.
        reason = str(exc).replace(str(model_path), model_path.name)
        raise ModelLoadFailed(f"llama.cpp cannot load {model_path.name}: {reason}") from exc
    _check_positions(llama, llama_cpp, model_path, max_tokens)
    shared = SharedLlama(llama)
    tokenizer = LlamaTokenizer(shared, max_tokens)
    engine = LlamaEngine(
        shared, llama_cpp, batch_size, max_tokens=max_tokens, normalize_output=normalize_output
    )
    return tokenizer, engine


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise RuntimeMissing(
            f"GGUF models run on llama.cpp, which is not installed: {INSTALL_HINT}"
        ) from exc
    _route_native_logs(llama_cpp)
    return llama_cpp


@functools.cache
def _route_native_logs(llama_cpp: Any) -> Any:
    """Send llama.cpp's log lines to `logging`, once per process.

    llama-cpp-python prints them to stderr through a level table older than ggml's current
    one, so warnings show even with verbose=False. The cache keeps the C callback alive.
    """
    native = logging.getLogger(f"{__name__}.llama_cpp")
    # ggml_log_level: 1 debug, 2 info, 3 warn, 4 error (5 continues the previous line).
    levels = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.ERROR}

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def forward(level: int, text: bytes, _user_data: Any) -> None:
        message = text.decode("utf-8", errors="replace").rstrip()
        if message:
            native.log(levels.get(level, logging.DEBUG), "%s", message)

    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))
    return forward


def _check_positions(llama: Any, llama_cpp: Any, model_path: Path, max_tokens: int) -> None:
    trained = int(llama_cpp.llama_model_n_ctx_train(llama.model))
    architecture = str(llama.metadata.get("general.architecture", ""))
    if max_tokens > trained and architecture in LEARNED_POSITIONS:
        llama.close()
        raise ModelLoadFailed(
            f"{model_path.name}: ctx_len {max_tokens} exceeds the {trained} positions "
            f"the model was trained with; lower ctx_len in model.json"
        )


class SharedLlama:
    """The llama.cpp instance that a model's tokenizer and engine share, freed once.

    llama.cpp reads freed memory (a segfault) when called after its model is freed, and
    aborts the process when two decodes run at once on one context. So every call holds the
    instance open (`open`), decodes also take turns (`turn`), and `close` waits for the calls
    running to end; a call after it raises EngineFailure. Tokenising needs no turn: it only
    reads the vocabulary.
    """

    def __init__(self, llama: Any) -> None:
        self._llama = llama
        self._state = threading.Condition()
        self._users = 0
        self._closed = False
        self.turn = threading.Lock()

    @contextlib.contextmanager
    def open(self) -> Iterator[Any]:
        with self._state:
            if self._closed:
                raise EngineFailure("the llama.cpp model is closed")
            self._users += 1
        try:
            yield self._llama
        finally:
            with self._state:
                self._users -= 1
                self._state.notify_all()

    def close(self) -> bool:
        """Free the instance once the calls running end; False if it was already closed."""
        with self._state:
            if self._closed:
                return False
            self._closed = True
            self._state.wait_for(lambda: self._users == 0)
        self._llama.close()
        return True


class LlamaTokenizer:
    """The model's own llama.cpp tokenizer behind Ember's ModelTokenizer contract.

    GGUF files carry their vocabulary, and llama.cpp ids are what the weights expect, so
    no Hugging Face tokenizer is involved. Special tokens written in the text are parsed,
    as Hugging Face tokenizers do.
    """

    def __init__(self, shared: SharedLlama, max_tokens: int) -> None:
        self._shared = shared
        self.max_tokens = max_tokens
        with shared.open() as llama:
            self.vocab_size = int(llama.n_vocab())
            # What llama.cpp wraps every text in, e.g. [CLS] … [SEP] for BERT.
            empty = list(llama.tokenize(b"", add_bos=True, special=True))
        self._special = SpecialTokens.from_empty_text(empty)

    def encode(self, texts: Sequence[str]) -> list[TokenIds]:
        """Token ids of each text with special tokens, untruncated."""
        with self._shared.open() as llama:
            return [
                _as_ids(llama.tokenize(text.encode("utf-8"), add_bos=True, special=True))
                for text in texts
            ]

    def is_wrapped(self, ids: Sequence[int]) -> bool:
        return self._special.is_wrapped(ids)

    def wrap(self, ids: Sequence[int]) -> TokenIds:
        return self._special.wrap(ids)

    def truncate_ids(self, ids: TokenIds) -> TokenIds:
        return self._special.truncate(ids, self.max_tokens)

    def decode(self, ids: Sequence[int]) -> str:
        with self._shared.open() as llama:
            text: bytes = llama.detokenize([int(token) for token in ids], special=False)
        # WordPiece vocabularies mark word starts with a space, so decoded text opens with one.
        return text.decode("utf-8", errors="replace").lstrip(" ")


class LlamaEngine:
    """Runs token batches through llama.cpp and reads its pooled vectors per sequence.

    `Llama.embed` only takes strings, so batches are filled through llama.cpp's own batch
    API: each input becomes one sequence id, and llama.cpp pools each sequence apart.
    """

    def __init__(
        self,
        shared: SharedLlama,
        llama_cpp: Any,
        batch_size: int,
        *,
        max_tokens: int,
        normalize_output: bool,
    ) -> None:
        self._shared = shared
        self._api = llama_cpp
        self._batch_size = batch_size
        self._max_tokens = max_tokens
        self._normalize = normalize_output
        with shared.open() as llama:
            self._max_sequences = int(llama.context_params.n_seq_max)
            self._dimensions = int(llama.n_embd())
        self._batch = llama_cpp.llama_batch_init(batch_size, 0, 1)

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def lanes(self) -> int:
        return 1  # one llama.cpp context: calls must not overlap

    @property
    def runtime(self) -> str:
        return "llama.cpp"

    def embed(self, batch: TokenBatch, *, alone: bool = False) -> Vectors:
        # An empty sequence gets a zero row, as the ONNX engines pool one: llama.cpp has no
        # vector for a sequence without tokens (and refuses a decode of none at all).
        filled = [row for row, sequence in enumerate(batch.sequences) if len(sequence)]
        sequences = [batch.sequences[row] for row in filled]
        vectors = np.zeros((len(batch), self._dimensions), np.float32)
        with self._shared.open() as llama, self._shared.turn:
            rows = [self._embed_group(llama, group) for group in self._groups(sequences)]
        if rows:
            vectors[filled] = np.concatenate(rows)
        return normalize(vectors) if self._normalize else vectors

    def _groups(self, sequences: Sequence[TokenIds]) -> Iterator[Sequence[TokenIds]]:
        """Consecutive runs of sequences that fit one llama.cpp batch."""
        start, tokens = 0, 0
        for index, sequence in enumerate(sequences):
            # Not the batch size, which may be larger: past a learned position table,
            # llama.cpp aborts the process (GGML_ASSERT in get_rows).
            if len(sequence) > self._max_tokens:
                raise EngineFailure(
                    f"a sequence of {len(sequence)} tokens exceeds ctx_len {self._max_tokens}"
                )
            full = tokens + len(sequence) > self._batch_size
            if index > start and (full or index - start >= self._max_sequences):
                yield sequences[start:index]
                start, tokens = index, 0
            tokens += len(sequence)
        if start < len(sequences):
            yield sequences[start:]

    def _embed_group(self, llama: Any, sequences: Sequence[TokenIds]) -> Vectors:
        batch = self._batch
        position = 0
        for seq_id, sequence in enumerate(sequences):
            for offset, token in enumerate(sequence.tolist()):
                batch.token[position] = token
                batch.pos[position] = offset
                batch.n_seq_id[position] = 1
                batch.seq_id[position][0] = seq_id
                # Every token is an output: llama.cpp pools over the outputs of a sequence.
                batch.logits[position] = 1
                position += 1
        batch.n_tokens = position
        context = llama.ctx
        memory = self._api.llama_get_memory(context)
        if memory:  # decoder models keep a cache; encoders have none
            self._api.llama_memory_clear(memory, True)
        status = self._api.llama_decode(context, batch)
        if status != 0:
            raise EngineFailure(f"llama_decode returned {status}")
        vectors = np.empty((len(sequences), self._dimensions), dtype=np.float32)
        for seq_id in range(len(sequences)):
            pointer = self._api.llama_get_embeddings_seq(context, seq_id)
            if not pointer:
                raise EngineFailure("llama.cpp returned no pooled vector")
            vectors[seq_id] = np.ctypeslib.as_array(
                ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self._dimensions,)
            )
        return vectors

    def close(self) -> None:
        """Free the model once a call running ends (the tokenizer's too); calls after this
        raise EngineFailure. Closing again does nothing."""
        if self._shared.close():
            self._api.llama_batch_free(self._batch)


def _as_ids(ids: Sequence[int]) -> TokenIds:
    return np.asarray(ids, dtype=np.int64)
