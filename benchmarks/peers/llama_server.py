"""llama.cpp as a peer: llama-cpp-python's OpenAI server on the model converted to GGUF.

Started as Jan starts it for an embedding model: `--embedding true` with n_batch = n_ubatch
= 512. Both cores are given to it (n_threads and n_threads_batch = 2), as Ember gets both.
"""

from __future__ import annotations

import os
from pathlib import Path

from servers import ServerProcess, free_port, launch, wait_for_vector

MODEL_ALIAS = "all-MiniLM-L6-v2"


def llama_command(python: str, gguf: Path, port: int, threads: int = 2) -> list[str]:
    return [
        python,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        MODEL_ALIAS,
        "--embedding",
        "true",
        "--n_batch",
        "512",
        "--n_ubatch",
        "512",
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def start_llama(python: str, gguf: Path, log_dir: Path) -> ServerProcess:
    port = free_port()
    server = launch("llamacpp", llama_command(python, gguf, port), port, log_dir, dict(os.environ))
    try:
        wait_for_vector(server, MODEL_ALIAS, timeout=180)
    except Exception:
        server.stop()
        raise
    return server
