"""Token ids for a chunk's texts, as the server makes them, without tokenising what truncation
drops: a 50 MB line took 60 s and 6 GB of memory to tokenise, only for 256 tokens to be kept.

A long text is tokenised from its head, cut where a word ends: the model tokenises each word
its pre-tokenizer makes on its own, so the head's ids begin the whole text's. The model's
own normalizer and pre-tokenizer say where words end, on a stretch just before the cut (or
all the text before it, if that stretch is one word), so text without spaces is cut too:
Chinese, base64, URLs, minified JSON (a 20 MB line of Chinese or base64 took 30-70 s and
3.4 GB). Text that is one word up to the cut (a hex dump: WordPiece reads it as one [UNK]
however long it is), and text for a tokenizer that is not a tokenizer.json (GGUF's), is cut
before a space after it, where every tokenizer here starts a word, or else tokenised whole.
Only a head with ids well past the limit is trusted; otherwise a wider one is tried.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from ember.bulk.errors import InputUnreadable
from ember.engines.base import ModelTokenizer, TokenIds
from ember.models.tokenizer import TextTokenizer

WordSpans = Callable[[str], list[tuple[int, int]] | None]

# A head this many characters per token of the limit holds several times the limit's tokens
# in any real text (English averages about 4-5 characters per word piece).
_CHARS_PER_TOKEN = 16
_WIDER = 8
# The stretch before the wanted cut that the pre-tokenizer splits first: several words of
# any real text, and past WordPiece's 100-character words (a longer run means splitting all
# the text before the cut). A few characters after it settle where its last word ends.
_STRETCH = 1024
_AFTER = 16
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
    words = tokenizer.word_spans if isinstance(tokenizer, TextTokenizer) else None
    heads = [head(text, chars, words) for text in texts]
    sequences = tokenizer.encode(heads)
    truncated = 0
    for number, text in enumerate(texts):
        window, cut = chars, len(heads[number]) < len(text)
        while cut and len(sequences[number]) < 2 * limit:  # too few ids to trust: widen
            window *= _WIDER
            shown = head(text, window, words)
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


def head(text: str, chars: int, words: WordSpans | None = None) -> str:
    """`text` up to the last end of a word that `words` finds just before `chars` characters;
    without one, up to its last word end before a space within `chars`, or its first after
    them; all of it when it is that short or has no word end at all."""
    if len(text) <= chars:
        return text
    end = _last_word_end(text, chars, words) if words is not None else None
    if end is not None:
        return text[:end]
    found = _LAST_WORD_END.match(text, 0, chars + 1) or _WORD_END.search(text, chars)
    return text[: found.end()] if found else text


def _last_word_end(text: str, chars: int, words: WordSpans) -> int | None:
    """The last word end before `chars` (or just after) that the stretch there shows, else
    all the text before it: one followed by another word, so the edges of what was split
    decide nothing (its first word may have begun before it, its last go on after it)."""
    for start in (max(0, chars - _STRETCH), 0):
        spans = words(text[start : chars + _AFTER]) or []
        ends = [start + end for _, end in spans[1 if start else 0 : -1]]
        if ends:
            return ends[-1]
        if not start:
            return None
    return None
