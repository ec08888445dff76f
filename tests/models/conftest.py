"""Fixtures for model-management tests that run `ember` as a real process."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def no_ember_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No EMBER_* variable of the caller's reaches the processes a test starts (a CI's
    EMBER_HOME or EMBER_MODELS_DIR would redirect them)."""
    for name in [name for name in os.environ if name.startswith("EMBER_")]:
        monkeypatch.delenv(name)
