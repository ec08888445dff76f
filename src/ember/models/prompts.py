"""Model prompts: which prefix a request's `input_type` (or the model's default) selects."""

from __future__ import annotations

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
