"""Peers Ember is measured against, each run in its own process."""
