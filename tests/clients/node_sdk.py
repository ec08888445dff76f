"""The official OpenAI Node.js SDK (npm `openai`), installed outside the repo and run by node.

openai 7 declares Node.js 22 or newer; this project's machines have Node.js 20, where 6 is the
newest major the SDK supports (its embeddings code, base64 by default, is the same). A later 7.x
may use what Node.js 20 lacks, so the major follows the Node.js found unless
EMBER_TEST_OPENAI_NODE names a version spec (e.g. `7`, `6.49.0`) to test instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NPM_TIMEOUT_SECONDS = 300
SCRIPT_TIMEOUT_SECONDS = 60

# Imports and a client on EMBER_URL / EMBER_KEY; `sent` and `received` record what went over
# the wire (the request bodies, and each response's first embedding's JSON type), so a test can
# see that the default asks for base64 and gets strings it decodes.
PRELUDE = """
import OpenAI from 'openai';
const sent = [];
const received = [];
async function recordingFetch(url, init) {
  if (init && typeof init.body === 'string') sent.push(JSON.parse(init.body));
  const response = await fetch(url, init);
  const body = await response.clone().json().catch(() => null);
  const first = body && Array.isArray(body.data) ? body.data[0] : undefined;
  if (first && 'embedding' in first) received.push(typeof first.embedding);
  return response;
}
const client = new OpenAI({
  baseURL: process.env.EMBER_URL, apiKey: process.env.EMBER_KEY,
  maxRetries: 0, timeout: 30000, fetch: recordingFetch,
});
function failure(error) {
  return {
    name: error.constructor.name, status: error.status ?? null, error: error.error ?? null,
    isAuthenticationError: error instanceof OpenAI.AuthenticationError,
    isNotFoundError: error instanceof OpenAI.NotFoundError,
    isBadRequestError: error instanceof OpenAI.BadRequestError,
  };
}
function report(value) { process.stdout.write(JSON.stringify({ ...value, sent, received })); }
"""


@dataclass(frozen=True)
class NodeSdk:
    """An installed `openai` package: node runs scripts from `folder`, where it resolves."""

    folder: Path
    version: str

    def run(self, script: str, *, url: str, key: str) -> dict[str, Any]:
        """Run PRELUDE + `script` as an ES module; it must `report({...})` once. Returns that
        object, with `sent` (request bodies) and `received` (embedding JSON types)."""
        env = {name: value for name, value in os.environ.items() if not name.startswith("OPENAI_")}
        env.update(EMBER_URL=url, EMBER_KEY=key, NODE_NO_WARNINGS="1")
        completed = subprocess.run(
            ["node", "--input-type=module", "--eval", PRELUDE + script],
            cwd=self.folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_SECONDS,
            check=False,
        )
        if completed.returncode != 0:
            raise AssertionError(f"node exited {completed.returncode}:\n{completed.stderr}")
        result: dict[str, Any] = json.loads(completed.stdout)
        return result


def missing_tools() -> str | None:
    """Why the SDK cannot be tested here, or None when node and npm are on PATH."""
    absent = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    return f"{' and '.join(absent)} not found on PATH" if absent else None


def sdk_spec(node_version: str) -> str:
    """The npm version spec to install for a `node --version` such as `v20.20.2`."""
    chosen = os.environ.get("EMBER_TEST_OPENAI_NODE")
    if chosen:
        return chosen
    major = int(node_version.strip().lstrip("v").split(".")[0])
    return "7" if major >= 22 else "6"


def install_sdk(folder: Path) -> NodeSdk:
    """npm-install `openai` into `folder` (npm's own cache makes later installs quick)."""
    node_version = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, check=True
    ).stdout
    folder.mkdir(parents=True, exist_ok=True)
    # A package.json of its own keeps npm from looking for one in the folders above.
    (folder / "package.json").write_text('{"private": true}\n', encoding="utf-8")
    env = {**os.environ, "npm_config_update_notifier": "false"}
    completed = subprocess.run(
        [
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--no-save",
            f"openai@{sdk_spec(node_version)}",
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT_SECONDS,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"npm install openai failed:\n{completed.stdout}\n{completed.stderr}")
    manifest = folder / "node_modules" / "openai" / "package.json"
    version: str = json.loads(manifest.read_text(encoding="utf-8"))["version"]
    return NodeSdk(folder, version)
