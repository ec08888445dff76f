"""Options several commands share, and how they become settings."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from ember.settings import ServerSettings, load_settings

Command = TypeVar("Command", bound=Callable[..., Any])


def warnings_to_terminal() -> None:
    """Library warnings (two folders claiming one model name) print as 'WARNING: …' lines, not
    as the bare lines Python prints when logging is not configured."""
    logging.basicConfig(format="%(levelname)s: %(message)s")


def home_options(command: Command) -> Command:
    """--home and --models-dir, read like their EMBER_HOME / EMBER_MODELS_DIR variables."""
    command = click.option(
        "--models-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Folder of model folders [env EMBER_MODELS_DIR; default HOME/models].",
    )(command)
    return click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        help="Ember's data folder [env EMBER_HOME; default ~/.ember].",
    )(command)


def settings_from(**flags: Any) -> ServerSettings:
    """Flags given on the command line win over the environment."""
    try:
        return load_settings(flags)
    except ValidationError as exc:
        raise click.UsageError(_described(exc, flags)) from exc


def setting_source(field: str, flags: dict[str, Any]) -> str:
    """Where a setting's value came from, as the user wrote it: its flag or its variable."""
    if flags.get(field) is not None:
        return "--" + field.replace("_", "-")
    return "EMBER_" + field.upper()


def _described(exc: ValidationError, flags: dict[str, Any]) -> str:
    """Each invalid value as the flag or variable it came from, its value and why, on one
    line (pydantic's own text names fields, not EMBER_* variables, over several lines)."""
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        source = setting_source(field, flags)
        reason = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"Invalid value for {source}: {error['input']!r}: {reason}.")
    return " ".join(problems)
