"""Real client packages against the real server: tiktoken's vocabulary provided offline."""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.settings import ServerSettings
from tests.support.server import RunningServer, serve_in_thread

# tiktoken caches each vocabulary under the sha1 of its download address; this is
# cl100k_base's. bpe-openai ships the same file (byte-identical), so nothing is downloaded.
CL100K_CACHE_NAME = "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"


@pytest.fixture(scope="session", autouse=True)
def tiktoken_offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    cache = tmp_path_factory.mktemp("tiktoken")
    spec = importlib.util.find_spec("bpe_openai")  # located, not imported
    assert spec is not None
    assert spec.origin is not None
    packaged = Path(spec.origin).parent / "data" / "cl100k_base.tiktoken.gz"
    (cache / CL100K_CACHE_NAME).write_bytes(gzip.decompress(packaged.read_bytes()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        yield


@pytest.fixture(scope="module")
def server(
    default_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    settings = ServerSettings(
        home=tmp_path_factory.mktemp("home"), models_dir=default_models_dir, api_key="sk-local"
    )
    with serve_in_thread(settings) as running:
        yield running
