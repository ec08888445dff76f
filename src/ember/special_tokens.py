"""The special tokens a tokenizer wraps every text in ([CLS] … [SEP] for BERT), and the
operations on token ids that depend on them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

TokenIds = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SpecialTokens:
    """What precedes and follows a text's own tokens."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]

    @classmethod
    def from_empty_text(cls, ids: Sequence[int]) -> SpecialTokens:
        """Learn them from the encoding of "" (special tokens only): first opens, rest close."""
        return cls(tuple(ids[:1]), tuple(ids[1:]))

    def is_wrapped(self, ids: Sequence[int]) -> bool:
        """Whether `ids` already carry these special tokens."""
        if not self.prefix and not self.suffix:
            return False
        ids = tuple(int(token) for token in ids)
        if len(ids) < len(self.prefix) + len(self.suffix):
            return False
        starts = ids[: len(self.prefix)] == self.prefix
        return starts and (not self.suffix or ids[-len(self.suffix) :] == self.suffix)

    def wrap(self, ids: Sequence[int]) -> TokenIds:
        """Add the special tokens to raw ids unless they are already there."""
        if self.is_wrapped(ids):
            return np.asarray(ids, dtype=np.int64)
        return np.asarray([*self.prefix, *ids, *self.suffix], dtype=np.int64)

    def truncate(self, ids: TokenIds, max_tokens: int) -> TokenIds:
        """Cut wrapped ids to `max_tokens`, keeping the closing special tokens."""
        if len(ids) <= max_tokens:
            return ids
        keep = max_tokens - len(self.suffix)
        return np.concatenate([ids[:keep], ids[len(ids) - len(self.suffix) :]])
