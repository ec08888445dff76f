"""Convert a Hugging Face model folder to GGUF with llama.cpp's own converter.

The converter ships in llama-cpp-python's source archive (vendor/llama.cpp), fetched with
`pip download` at the version the llama.cpp peer runs. It imports torch and transformers, so it
runs on the sentence-transformers peer's Python; `gguf` comes from the same archive.

    python benchmarks/peers/make_gguf.py MODEL_FOLDER OUT.gguf \
        --st-python /work/refenv/bin/python --llama-python /work/llamaenv/bin/python
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def installed_version(llama_python: str) -> str:
    code = "import importlib.metadata as m; print(m.version('llama-cpp-python'))"
    done = subprocess.run([llama_python, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def fetch_converter(llama_python: str, into: Path) -> Path:
    """Download the sdist and unpack just the converter; returns its llama.cpp folder."""
    version = installed_version(llama_python)
    download = [llama_python, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    subprocess.run(
        [*download, f"llama-cpp-python=={version}", "-d", str(into)], check=True, timeout=600
    )
    (archive,) = into.glob("llama_cpp_python-*.tar.gz")
    root = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(archive) as source:
        members = [
            member
            for member in source.getmembers()
            if member.name.startswith(root) and member.name[len(root) :].startswith(CONVERTER_PARTS)
        ]
        source.extractall(into, members=members, filter="data")
    return into / root


def convert(model: Path, out: Path, st_python: str, llama_python: str, outtype: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ember-gguf-") as scratch:
        llama_cpp = fetch_converter(llama_python, Path(scratch))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(llama_cpp / "gguf-py")}
        command = [st_python, str(llama_cpp / "convert_hf_to_gguf.py"), str(model)]
        command += ["--outtype", outtype, "--outfile", str(out)]
        subprocess.run(command, check=True, env=env, timeout=900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="Hugging Face model folder (safetensors)")
    parser.add_argument("out", type=Path, help="GGUF file to write")
    parser.add_argument("--st-python", required=True, help="Python with torch and transformers")
    parser.add_argument("--llama-python", required=True, help="Python with llama-cpp-python")
    parser.add_argument("--outtype", default="f32", choices=["f32", "f16"])
    args = parser.parse_args()
    convert(args.model, args.out, args.st_python, args.llama_python, args.outtype)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
