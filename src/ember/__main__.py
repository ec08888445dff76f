"""`python -m ember` runs the CLI."""

from ember.cli import main

main()
