"""Bulk-run fixtures: a fast fake-engine model, and the CLI invoked in-process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ember.cli import main
from tests.support.models import write_fake_model

FAKE_MODEL = "fake-bulk"

Invoke = Callable[..., Result]


@pytest.fixture
def fake_models_dir(tmp_path: Path) -> Path:
    """A fake-engine model (8 dims, shortens to 4) with a tiny real tokenizer."""
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, FAKE_MODEL, matryoshka_dimensions=[4])
    return models_dir


@pytest.fixture
def invoke() -> Invoke:
    """Run `ember ARGS…` in this process and return click's result."""

    def run(*args: str | Path) -> Result:
        return CliRunner().invoke(main, [str(arg) for arg in args])

    return run
