"""Which vocabulary token-id inputs are in: the model's own, or OpenAI's cl100k_base.

OpenAI clients such as LangChain's OpenAIEmbeddings tokenise with tiktoken (cl100k_base)
and send the ids instead of the text. Served as the model's own ids they would give wrong
vectors, so Ember decodes cl100k ids back to text and tokenises that with the model's
tokenizer. In `auto` mode the ids tell which they are:

1. an id beyond the model's vocabulary: cl100k;
2. arrays wrapped in the model's own special tokens ([CLS] … [SEP]): the model's (a
   Hugging Face tokenizer adds them by default);
3. every array survives a cl100k decode/encode round trip: cl100k. What tiktoken emits
   always does, and a bare array is what OpenAI's API means by token ids;
4. otherwise: the model's.

Rule 3 once came after another: bare arrays that the model's tokenizer reproduces, longer
than 3 ids, were the model's. Common lowercase words have small ids in both vocabularies,
so cl100k arrays such as "hello hello hello hello" or "apple search quick brown document"
passed it and were served as the model's ids: wrong vectors, silently (25 of 172 cl100k
arrays of adversarial, fixture and short lowercase texts, on MiniLM). Bare model ids that
also read as cl100k are now cl100k's: send the model's special tokens, or set
`token_ids: model`, to have bare model ids read as the model's.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ember.engines.base import ModelTokenizer
from ember.errors import InvalidRequest

TokenIdsMode = Literal["auto", "model", "cl100k"]
CL100K = "cl100k_base"


@dataclass
class Cl100k:
    """OpenAI's cl100k_base, loaded on first use (it takes a second or two)."""

    _encoding: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def encoding(self) -> Any:
        with self._lock:
            if self._encoding is None:
                with warnings.catch_warnings():
                    # bpe-openai reads its data with a deprecated importlib call.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    import bpe_openai

                    self._encoding = bpe_openai.get_encoding(CL100K)
            return self._encoding

    def decode(self, arrays: Sequence[Sequence[int]]) -> list[str]:
        encoding = self.encoding()
        limit = encoding.n_vocab
        for index, ids in enumerate(arrays):
            bad = next((token for token in ids if not 0 <= token < limit), None)
            if bad is not None:
                raise InvalidRequest(
                    f"Input {index} has token id {bad}, outside both the model's vocabulary "
                    f"and {CL100K} (0 to {limit - 1}).",
                    param="input",
                )
        try:
            return [str(text) for text in encoding.decode_batch([list(ids) for ids in arrays])]
        except KeyError:  # an id inside the range that names no token (e.g. 100256)
            index, bad = self._undefined(arrays)
            raise InvalidRequest(
                f"Input {index} has token id {bad}, which is neither in the model's vocabulary "
                f"nor a token of {CL100K}.",
                param="input",
            ) from None

    def round_trips(self, arrays: Sequence[Sequence[int]]) -> bool:
        encoding = self.encoding()
        if any(token >= encoding.n_vocab or token < 0 for ids in arrays for token in ids):
            return False
        try:
            texts = encoding.decode_batch([list(ids) for ids in arrays])
        except KeyError:  # an unused id: not what tiktoken emits
            return False
        encoded = encoding.encode_batch(texts, allowed_special=set())
        return all(list(again) == list(ids) for again, ids in zip(encoded, arrays, strict=True))

    def _undefined(self, arrays: Sequence[Sequence[int]]) -> tuple[int, int]:
        """The first (input, id) that cl100k has no token for."""
        encoding = self.encoding()
        for index, ids in enumerate(arrays):
            for token in ids:
                try:
                    encoding.decode([token])
                except KeyError:
                    return index, token
        raise AssertionError("decode failed, yet every id decodes alone")


def is_cl100k(
    arrays: Sequence[Sequence[int]], tokenizer: ModelTokenizer, mode: TokenIdsMode, cl100k: Cl100k
) -> bool:
    """Whether `arrays` hold cl100k ids to re-tokenise, by `mode` and the rules above."""
    if mode != "auto":
        return mode == "cl100k"
    if any(token >= tokenizer.vocab_size for ids in arrays for token in ids):
        return True
    if all(tokenizer.is_wrapped(ids) for ids in arrays):
        return False
    return cl100k.round_trips(arrays)
