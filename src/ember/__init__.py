"""Ember: a local, OpenAI-compatible text-embeddings server."""

__version__ = "0.1.0"
