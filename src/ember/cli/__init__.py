"""The `ember` command: a group of nouns and verbs."""

from __future__ import annotations

import click

from ember import __version__
from ember.cli.embed import embed
from ember.cli.models import models
from ember.cli.serve import serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Ember: a local, OpenAI-compatible text-embeddings server."""


@main.command()
def version() -> None:
    """Print Ember's version."""
    click.echo(f"ember {__version__}")


main.add_command(serve)
main.add_command(models)
main.add_command(embed)
