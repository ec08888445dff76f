"""`python -m ember` runs the CLI."""

from ember.launch import main

main()
