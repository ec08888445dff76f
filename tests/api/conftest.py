"""A real Ember server on the real default model, behind the seed's API key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from ember.settings import ServerSettings
from tests.support.server import RunningServer, serve_in_thread

API_KEY = "secret-key-123"


@pytest.fixture(scope="module")
def server(
    default_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    settings = ServerSettings(
        home=tmp_path_factory.mktemp("ember-home"), models_dir=default_models_dir, api_key=API_KEY
    )
    with serve_in_thread(settings) as running:
        yield running


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as client:
        yield client


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_url, api_key=API_KEY, max_retries=0)
