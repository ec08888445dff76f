"""The task prefixes nomic-embed-text was trained with (its model card), which its
sentence-transformers config lists and its GGUF files do not carry. The names are the ones
sentence-transformers prompts use, so `input_type: "query"` finds "search_query"."""

from __future__ import annotations

NOMIC_PROMPTS = {
    "search_query": "search_query: ",
    "search_document": "search_document: ",
    "clustering": "clustering: ",
    "classification": "classification: ",
}
