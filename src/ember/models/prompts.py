"""Model prompts: which prefix a request's `input_type` (or the model's default) selects, and
the prefix's own token ids, for inputs sent as the model's token ids."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ember.engines.base import ModelTokenizer, TokenIds
from ember.errors import InvalidRequest
from ember.models.settings import ModelSettings

# Generic names clients send, and the prompt names models commonly use for them.
PROMPT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "query": ("query", "search_query", "retrieval.query"),
    "document": ("document", "search_document", "passage", "retrieval.passage"),
}


def prompt_for(settings: ModelSettings, input_type: str | None) -> str:
    """The prefix to put before each text: the named prompt, else the model's default."""
    if input_type is None:
        return settings.prompts.get(settings.default_prompt or "", "")
    if input_type in settings.prompts:
        return settings.prompts[input_type]
    for name in PROMPT_SYNONYMS.get(input_type, ()):
        if name in settings.prompts:
            return settings.prompts[name]
    if input_type in PROMPT_SYNONYMS and not settings.prompts:
        return ""  # a model without prompts embeds queries and documents alike
    known = ", ".join(sorted(settings.prompts)) or "none"
    raise InvalidRequest(
        f"Unknown input_type '{input_type}' for model '{settings.id}'; its prompts: {known}.",
        param="input_type",
    )


# Texts whose encodings, with and without a prompt, show the prompt's own ids: the first
# finds them, the second checks them.
_PROBES = ("hello world", "The quick brown fox jumps over the lazy dog, 42 times.")


@dataclass(frozen=True)
class PromptIds:
    """A prompt's own token ids, and where they go in a wrapped array: after its opening
    special tokens ([CLS] for BERT), as the tokenizer puts them when it encodes prompt + text."""

    opening: int
    ids: tuple[int, ...]

    def apply(self, wrapped: TokenIds) -> TokenIds:
        """`wrapped` with the prompt's ids, unless it already carries them there."""
        start, end = self.opening, self.opening + len(self.ids)
        if tuple(int(token) for token in wrapped[start:end]) == self.ids:
            return wrapped
        prompt = np.asarray(self.ids, dtype=np.int64)
        return np.concatenate([wrapped[:start], prompt, wrapped[start:]])


def prompt_ids(tokenizer: ModelTokenizer, prefix: str) -> PromptIds | None:
    """The ids `tokenizer` gives `prefix` before a text, or None when it does not encode
    prefix + text as opening specials, prompt ids, the text's own ids, closing specials (a
    BPE that merges the prompt's last characters with the text's first): a client's token
    ids then cannot get the prompt exactly."""
    specials = _tuple(tokenizer.wrap([]))
    probe, check = _PROBES
    bare, prefixed = (_tuple(ids) for ids in tokenizer.encode([probe, prefix + probe]))
    opening = 0
    while opening < min(len(bare), len(specials)) and bare[opening] == specials[opening]:
        opening += 1
    after = len(bare) - opening  # the probe's own ids and the closing specials
    if len(prefixed) < len(bare) or prefixed[:opening] != bare[:opening]:
        return None
    if prefixed[len(prefixed) - after :] != bare[opening:]:
        return None
    found = PromptIds(opening, prefixed[opening : len(prefixed) - after])
    bare, prefixed = (_tuple(ids) for ids in tokenizer.encode([check, prefix + check]))
    closing = len(specials) - opening
    text = bare[opening : len(bare) - closing]
    if _tuple(tokenizer.wrap(text)) != bare:
        return None  # the tokenizer's own wrap disagrees with its encode
    expected = (*specials[:opening], *found.ids, *text, *specials[opening:])
    return found if prefixed == expected else None


def _tuple(ids: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(token) for token in ids)
