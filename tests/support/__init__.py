"""Helpers the tests share: a real server on a free port, and generated models."""
