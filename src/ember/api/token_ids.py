"""Which vocabulary token-id inputs are in: the model's own, or OpenAI's cl100k_base.

OpenAI clients such as LangChain's OpenAIEmbeddings tokenise with tiktoken (cl100k_base)
and send the ids instead of the text. Served as the model's own ids they would give wrong
vectors, so Ember decodes cl100k ids back to text and tokenises that with the model's
tokenizer. In `auto` mode the ids tell which they are:

1. an id beyond the model's vocabulary: cl100k;
2. arrays wrapped in the model's own special tokens ([CLS] … [SEP]): the model's;
3. every array survives a cl100k decode/encode round trip: cl100k (what tiktoken emits
   always does; the model's ids, read as cl100k, rarely do beyond a couple of tokens);
4. otherwise: the model's.
Send the model's special tokens, or set `token_ids: model`, to make model ids unambiguous.
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
        return [str(text) for text in encoding.decode_batch([list(ids) for ids in arrays])]

    def round_trips(self, arrays: Sequence[Sequence[int]]) -> bool:
        encoding = self.encoding()
        if any(token >= encoding.n_vocab or token < 0 for ids in arrays for token in ids):
            return False
        texts = encoding.decode_batch([list(ids) for ids in arrays])
        encoded = encoding.encode_batch(texts, allowed_special=set())
        return all(list(again) == list(ids) for again, ids in zip(encoded, arrays, strict=True))


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
