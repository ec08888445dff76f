"""`ember serve` as a process: a first start pulls the default model; offline explains."""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

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


def serve_and_wait(tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run `ember serve ARGS` that should stop on its own; its exit code and output."""
    log = tmp_path / "serve.log"
    env = {
        "EMBER_HOME": str(tmp_path / "home"),
        "EMBER_OFFLINE": "1",
        "EMBER_PORT": str(free_port()),
        **env,
    }
    with ember_process("serve", *args, env=env, log=log) as process:
        code = process.wait(timeout=30)
    return code, log.read_text()


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--log-level", "bogus"], {}, "--log-level"),
        (["--log-level", ""], {}, "--log-level"),
        ([], {"EMBER_PORT": "abc"}, "EMBER_PORT"),
        ([], {"EMBER_PORT": "-5"}, "EMBER_PORT"),
        (["--port", "70000"], {}, "--port"),
        ([], {"EMBER_SHUTDOWN_GRACE_SECONDS": "-1"}, "EMBER_SHUTDOWN_GRACE_SECONDS"),
        ([], {"EMBER_TOKEN_IDS": "foo"}, "EMBER_TOKEN_IDS"),
        ([], {"EMBER_MAX_BODY_BYTES": ""}, "EMBER_MAX_BODY_BYTES"),
    ],
)
def test_an_invalid_setting_is_one_error_line_naming_the_flag_or_variable(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    code, output = serve_and_wait(tmp_path, *args, env=env)
    assert code == 2, output
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, output
    assert named in errors[0]
    assert "Traceback" not in output
    assert "errors.pydantic.dev" not in output


def test_a_home_that_is_a_file_is_refused_from_the_environment_as_from_the_flag(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home-file"
    home.write_text("not a folder")
    (tmp_path / "home-dir").mkdir()
    (tmp_path / "home-dir" / "models").write_text("not a folder")
    for args, env in (
        (["--home", str(home)], {}),
        ([], {"EMBER_HOME": str(home)}),
        ([], {"EMBER_MODELS_DIR": str(home)}),
        ([], {"EMBER_HOME": str(tmp_path / "home-dir")}),
    ):
        code, output = serve_and_wait(tmp_path, *args, env=env)
        assert code == 2, output
        assert "a file" in output
        assert "Uvicorn running" not in output


def test_a_blank_api_key_does_not_count_as_one_beyond_loopback(tmp_path: Path) -> None:
    code, output = serve_and_wait(tmp_path, "--host", "0.0.0.0", env={"EMBER_API_KEY": " \n"})
    assert code == 2, output
    assert "without an API key" in output


def test_a_cache_path_that_cannot_be_opened_is_one_error_line(tmp_path: Path) -> None:
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_text("these are notes, not a SQLite database\n" * 100)
    for path in (tmp_path, not_a_database):
        code, output = serve_and_wait(tmp_path, env={"EMBER_CACHE_PATH": str(path)})
        assert code == 1, output
        assert "Traceback" not in output
        errors = [line for line in output.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, output
        assert str(path) in errors[0]
        assert "EMBER_CACHE_PATH" in errors[0]


def test_an_ipv6_host_in_brackets_is_served_as_without_them(tmp_path: Path) -> None:
    """[::1] is how IPv6 addresses are written in URLs; the bind address is ::1."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {"EMBER_HOME": str(tmp_path / "home"), "EMBER_OFFLINE": "1"}
    args = ("serve", "--host", "[::1]", "--port", str(port))
    with ember_process(*args, env=env, log=log) as process:
        wait_until_healthy(f"http://[::1]:{port}", process, log)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--host", "nope.invalid"], {}, "--host 'nope.invalid'"),
        (["--insecure"], {"EMBER_HOST": "nope.invalid"}, "EMBER_HOST 'nope.invalid'"),
    ],
)
def test_a_host_that_does_not_resolve_is_one_error_line_naming_it(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    """uvicorn's own "[Errno -2] Name or service not known" named neither host nor flag.
    The name is checked first: without a key, asking for one would not help."""
    code, output = serve_and_wait(tmp_path, *args, env=env)
    assert code == 2, output
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, output
    assert named in errors[0]
    assert "does not resolve" in errors[0]
    assert "Traceback" not in output
    assert "Uvicorn running" not in output


def test_port_0_serves_on_a_free_port_that_the_log_names(tmp_path: Path) -> None:
    """Ember's start-up line said "serving on http://127.0.0.1:0", a port nothing listens on."""
    log = tmp_path / "serve.log"
    env = {"EMBER_HOME": str(tmp_path / "home"), "EMBER_OFFLINE": "1"}
    with ember_process("serve", "--port", "0", env=env, log=log) as process:
        deadline = time.monotonic() + 60
        named = None
        while named is None and time.monotonic() < deadline and process.poll() is None:
            named = re.search(r"running on http://127\.0\.0\.1:(\d+)", log.read_text())
            time.sleep(0.1)
        assert named is not None, log.read_text()
        port = int(named.group(1))
        assert port != 0
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        assert "serving on http://127.0.0.1, a free port" in log.read_text()
        assert "127.0.0.1:0" not in log.read_text()
