"""`ember serve` as a process: a first start pulls the default model; offline explains."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import httpx
import openai

from tests.support.process import ember_process, wait_until_healthy
from tests.support.server import free_port


def test_first_start_pulls_the_default_model_and_serves_it(tmp_path: Path) -> None:
    port = free_port()
    home = tmp_path / "home"
    log = tmp_path / "serve.log"
    env = {"EMBER_HOME": str(home), "EMBER_API_KEY": "k-1"}
    with ember_process("serve", "--port", str(port), env=env, log=log) as process:
        wait_until_healthy(f"http://127.0.0.1:{port}", process, log)
        assert "pulling the default model all-MiniLM-L6-v2" in log.read_text()
        assert (home / "models" / "all-MiniLM-L6-v2" / "model.json").is_file()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k-1")
        response = client.embeddings.create(model="all-MiniLM-L6-v2", input="Hello world")
        assert len(response.data[0].embedding) == 384
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


def test_offline_start_without_models_explains_how_to_add_one(
    tmp_path: Path, default_models_dir: Path
) -> None:
    port = free_port()
    home = tmp_path / "home"
    log = tmp_path / "serve.log"
    env = {"EMBER_HOME": str(home), "EMBER_OFFLINE": "1"}
    with ember_process("serve", "--port", str(port), env=env, log=log) as process:
        wait_until_healthy(f"http://127.0.0.1:{port}", process, log)
        text = log.read_text()
        assert "offline" in text
        assert "ember models pull" in text
        assert "ember models add" in text
        assert not (home / "models").exists() or not any((home / "models").iterdir())
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/embeddings",
            json={"model": "all-MiniLM-L6-v2", "input": "x"},
        )
        assert response.status_code == 404
        # A model added while the server runs is found without a restart.
        shutil.copytree(
            default_models_dir / "all-MiniLM-L6-v2", home / "models" / "all-MiniLM-L6-v2"
        )
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/embeddings",
            json={"model": "all-MiniLM-L6-v2", "input": "x"},
            timeout=30,
        )
        assert response.status_code == 200


def test_version_and_help(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    with ember_process("version", log=log) as process:
        assert process.wait(timeout=30) == 0
    assert log.read_text().startswith("ember ")
    with ember_process("serve", "--help", log=log) as process:
        assert process.wait(timeout=30) == 0
    assert "--api-key" in log.read_text()
