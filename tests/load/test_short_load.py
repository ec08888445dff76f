"""A short run of benchmarks/load_test.py: concurrent mixed requests, no 5xx, every vector right."""

from __future__ import annotations

import asyncio
from pathlib import Path

from benchmarks.load_test import (
    build_references,
    make_texts,
    run_load,
    serving,
    vocabulary_words,
)


def test_concurrent_mixed_requests_get_their_own_vectors(
    default_models_dir: Path, tmp_path: Path
) -> None:
    with serving(tmp_path / "home", default_models_dir, tmp_path / "serve.log") as (url, models):
        texts = make_texts(vocabulary_words(models), 48, seed=1)
        pool = build_references(url, models, texts)
        report = asyncio.run(run_load(url, pool, duration=8, clients=16, max_batch=12, seed=1))
    summary = "\n".join(report.lines())
    assert report.served > 0, summary
    assert report.server_errors == 0, summary
    assert report.transport_errors == 0, summary
    assert set(report.statuses) == {"200"}, summary
    assert not report.mismatches, summary
    assert report.vectors_checked == report.inputs, summary
    assert len(report.kinds) == 8, summary  # every shape, in float and in base64
