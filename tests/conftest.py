"""Shared fixtures: the real default model, fetched once per session; clients of a module's
`server` fixture (a module whose server needs other clients defines its own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.models import pull_default_model
from tests.support.server import RunningServer


@pytest.fixture(scope="session")
def default_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding the real all-MiniLM-L6-v2, pulled and registered like a user's."""
    models_dir = tmp_path_factory.mktemp("home") / "models"
    pull_default_model(models_dir)
    return models_dir


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    """The official openai client on the module's server."""
    return openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0)


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        yield client
