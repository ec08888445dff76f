"""Ember's test suite."""
