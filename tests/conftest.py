"""Shared fixtures: the real default model, fetched once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.models import pull_default_model


@pytest.fixture(scope="session")
def default_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding the real all-MiniLM-L6-v2, pulled and registered like a user's."""
    models_dir = tmp_path_factory.mktemp("home") / "models"
    pull_default_model(models_dir)
    return models_dir
