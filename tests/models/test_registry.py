"""The registry: names two folders claim (which model gets each, and the warning that says
so), and loaded models whose folders go."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import httpx
import pytest

from ember.errors import ModelLoadFailed
from ember.models.loader import LoadedModel, load_model
from ember.models.registry import ModelRegistry
from ember.models.settings import ModelSettings
from ember.settings import ServerSettings
from tests.support.models import write_fake_model
from tests.support.server import serve_in_thread


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """alpha (8 dims) and beta (6) both alias 'shared', beta aliases 'alpha' too, and the
    folder 'gamma' (4 dims) declares the id 'alpha' again."""
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, "alpha", aliases=["shared"])
    write_fake_model(models_dir, "beta", dimensions=6, aliases=["shared", "alpha"])
    gamma = write_fake_model(models_dir, "gamma", dimensions=4)
    settings = json.loads((gamma / "model.json").read_text(encoding="utf-8"))
    (gamma / "model.json").write_text(json.dumps({**settings, "id": "alpha"}), encoding="utf-8")
    return models_dir


def clash(models_dir: Path, other: str, other_folder: str, name: str) -> str:
    alpha = models_dir / "alpha"
    return (
        f"models 'alpha' in {alpha} and '{other}' in {models_dir / other_folder} both claim "
        f"the name '{name}'; it goes to the one in {alpha}"
    )


def test_a_contested_name_goes_to_the_first_claim_with_one_warning(
    models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = ServerSettings(home=tmp_path, models_dir=models_dir)
    with (
        caplog.at_level(logging.WARNING, logger="ember.models.registry"),
        serve_in_thread(settings) as running,
        httpx.Client(base_url=running.base_url) as client,
    ):
        warnings = [record.getMessage() for record in caplog.records]
        assert warnings == [
            clash(models_dir, "alpha", "gamma", "alpha"),
            clash(models_dir, "beta", "beta", "shared"),
            clash(models_dir, "beta", "beta", "alpha"),
        ]
        for name, dimensions in [("alpha", 8), ("shared", 8), ("beta", 6)]:
            response = client.post("/v1/embeddings", json={"model": name, "input": "hello"})
            assert response.status_code == 200, response.text
            assert len(response.json()["data"][0]["embedding"]) == dimensions
        listed = client.get("/v1/models").json()["data"]
        assert sorted(model["id"] for model in listed) == ["alpha", "beta"]
        # Every listing rescans; a clash already reported is not reported again.
        assert [record.getMessage() for record in caplog.records] == warnings


def test_models_list_shows_the_warning(models_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ember", "models", "list", "--models-dir", str(models_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["alpha", "beta"]
    assert f"WARNING: {clash(models_dir, 'beta', 'beta', 'shared')}\n" in result.stderr
    assert f"WARNING: {clash(models_dir, 'alpha', 'gamma', 'alpha')}\n" in result.stderr


def test_ember_embed_shows_the_warning(models_dir: Path, tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("hello\nworld\n", encoding="utf-8")
    output = tmp_path / "vectors.jsonl"
    command = ["embed", str(texts), "--model", "beta", "--output", str(output)]
    result = subprocess.run(
        [sys.executable, "-m", "ember", *command, "--models-dir", str(models_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"WARNING: {clash(models_dir, 'beta', 'beta', 'shared')}\n" in result.stderr
    assert len(output.read_text(encoding="utf-8").splitlines()) == 2


def freed_on(model: LoadedModel | None) -> list[str]:
    """The names of the threads that freed `model`'s engine (one, once freed)."""
    assert model is not None
    threads: list[str] = []
    weakref.finalize(model.engine, lambda: threads.append(threading.current_thread().name))
    return threads


@pytest.mark.parametrize("change", ["removed", "replaced"])
def test_a_loaded_model_whose_folder_goes_is_freed_off_the_scanning_thread(
    tmp_path: Path, change: str
) -> None:
    """The registry dropped such a model with its entry, on the thread that rescanned: the
    event loop (find, /v1/models), which freeing a model's sessions stalls for 22-37 ms."""
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, "kept")
    folder = write_fake_model(models_dir, "going")
    registry = ModelRegistry(models_dir)
    asyncio.run(registry.acquire("going"))
    threads = freed_on(registry.find("going").loaded)
    if change == "removed":
        shutil.rmtree(folder)
    else:
        write_fake_model(models_dir, "going", dimensions=4)
    registry.rescan()
    deadline = time.monotonic() + 5
    while not threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threads == ["unload-going"]
    registry.close()


class CountingLoader:
    """The real loader, slowed so that requests pile up on a load, failing while `broken`."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.calls: list[bool] = []  # the `reloading` flag of each load

    def __call__(self, folder: Path, settings: ModelSettings, reloading: bool) -> LoadedModel:
        self.calls.append(reloading)
        time.sleep(0.2)
        if self.broken:
            raise OSError("weights unreadable")
        return load_model(folder, settings, reloading=reloading)


def test_requests_waiting_on_a_load_that_fails_share_its_failure(tmp_path: Path) -> None:
    """Each waiter tried the load again in turn: 8 requests at once on a model failing to load
    in 0.2 s made 8 loads, and the last one answered after 1.6 s."""
    write_fake_model(tmp_path, "broken")
    loader = CountingLoader(broken=True)
    registry = ModelRegistry(tmp_path, loader)

    async def at_once() -> list[BaseException | LoadedModel]:
        return await asyncio.gather(
            *(registry.acquire("broken") for _ in range(8)), return_exceptions=True
        )

    outcomes = asyncio.run(at_once())
    assert all(isinstance(outcome, ModelLoadFailed) for outcome in outcomes), outcomes
    assert {str(outcome) for outcome in outcomes} == {"broken: cannot load: weights unreadable"}
    assert len(loader.calls) == 1
    loader.broken = False  # repaired: the next request loads it again
    assert asyncio.run(registry.acquire("broken")).settings.id == "broken"
    assert len(loader.calls) == 2
    registry.close()


def test_reloads_asked_at_once_load_once(tmp_path: Path) -> None:
    """Lanes failing side by side each ask for a reload; one is enough for all."""
    write_fake_model(tmp_path, "flaky")
    loader = CountingLoader()
    registry = ModelRegistry(tmp_path, loader)
    first = asyncio.run(registry.acquire("flaky"))

    async def at_once() -> list[LoadedModel]:
        return await asyncio.gather(*(registry.acquire("flaky", reload=True) for _ in range(4)))

    reloaded = asyncio.run(at_once())
    assert loader.calls == [False, True]
    assert all(model is reloaded[0] for model in reloaded)
    assert reloaded[0] is not first
    registry.close()


def test_models_unloaded_for_keep_alive_or_room_may_have_lost_their_folder(
    tmp_path: Path,
) -> None:
    """unload_idle went by name, and a model removed while loaded was not found: it raised
    ModelNotFound, which ended the server's keep_alive task for good."""
    write_fake_model(tmp_path, "kept", keep_alive=0.1)
    folder = write_fake_model(tmp_path, "removed", keep_alive=0.1)
    registry = ModelRegistry(tmp_path)
    for name in ("kept", "removed"):
        asyncio.run(registry.acquire(name))
    shutil.rmtree(folder)
    assert sorted(registry.unload_idle(now=time.monotonic() + 60)) == ["kept", "removed"]
    assert registry.find("kept").loaded is None
    registry.close()
