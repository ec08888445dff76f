"""Bulk embedding of files in-process: stream rows, embed in token-budget batches, checkpoint."""
