"""Token ids for a chunk's texts, as the server makes them, without tokenising what truncation
drops: a 50 MB line took 60 s and 6 GB of memory to tokenise, only for 256 tokens to be kept.

A long text is tokenised from its head: cut just before a space that follows a word, where
every tokenizer here (BERT's word pieces, byte-level BPE, SentencePiece's metaspace) starts
a new word, so the head's ids are the whole text's first ids. Only a head with ids well past
the limit is trusted; otherwise a wider head is tried, and at last the whole text.
"""

from __future__ import annotations

import re

import numpy as np
import numpy.typing as npt

from ember.bulk.errors import InputUnreadable
from ember.engines.base import ModelTokenizer, TokenIds

# A head this many characters per token of the limit holds several times the limit's tokens
# in any real text (English averages about 4-5 characters per word piece).
_CHARS_PER_TOKEN = 16
_WIDER = 8
# A non-space before a space: a word ends there, and the head may too.
_LAST_WORD_END = re.compile(r".*[^ ](?= )", re.DOTALL)
_WORD_END = re.compile(r"[^ ](?= )")


def tokenised(
    texts: list[str], indices: npt.NDArray[np.intp], tokenizer: ModelTokenizer, *, truncate: bool
) -> tuple[list[TokenIds], int]:
    """Each text's ids, cut to the tokenizer's limit (and how many were), or InputUnreadable
    naming the first row past it when `truncate` is off."""
    limit = tokenizer.max_tokens
    chars = limit * _CHARS_PER_TOKEN
    heads = [head(text, chars) for text in texts]
    sequences = tokenizer.encode(heads)
    truncated = 0
    for number, text in enumerate(texts):
        window, cut = chars, len(heads[number]) < len(text)
        while cut and len(sequences[number]) < 2 * limit:  # too few ids to trust: widen
            window *= _WIDER
            shown = head(text, window)
            (sequences[number],) = tokenizer.encode([shown])
            cut = len(shown) < len(text)
        sequence = sequences[number]
        if len(sequence) <= limit:
            continue
        if not truncate:
            over = "over " if cut else ""
            raise InputUnreadable(
                f"Row {indices[number]} has {over}{len(sequence)} tokens; the model takes at "
                f"most {limit}. Leave out --no-truncate to cut such rows to the limit."
            )
        sequences[number] = tokenizer.truncate_ids(sequence)
        truncated += 1
    return sequences, truncated


def head(text: str, chars: int) -> str:
    """`text` up to its last word end within `chars` characters, or its first one after them
    if there is none; all of it when it is that short or has no word end at all."""
    if len(text) <= chars:
        return text
    found = _LAST_WORD_END.match(text, 0, chars + 1) or _WORD_END.search(text, chars)
    return text[: found.end()] if found else text
