"""Run every benchmark workload on Ember and its peers, side by side, and print the report.

    python benchmarks/run.py [--quick] [--peers st,llamacpp] [--st-python PY] [--llama-python PY]
                             [--gguf PATH] [--home DIR] [--wheel WHEEL] [--out FILE]

Everything runs on 127.0.0.1; every server is started here and stopped before exit.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
from cost import EncoderShape
from inprocess import EngineSystem
from machine import OthersMonitor, busy_share, wait_until_idle
from measure import Plan, measure
from peak import measure_peak
from peers import st_peer
from peers.llama_server import MODEL_ALIAS, llama_command, start_llama
from peers.make_gguf import convert
from report import render
from servers import (
    ServerProcess,
    cold_start,
    ember_command,
    ember_environment,
    free_port,
    start_ember,
)
from systems import HttpSystem, Memory, System
from targets import EMBER, EMBER_INT8, EMBER_OPENVINO, ENGINE, LLAMA, ST, Extras
from workloads import Workload, build_workloads, grouped

MODEL = "all-MiniLM-L6-v2"
INT8_MODEL = f"{MODEL}-int8-ember"  # Ember's own int8 variant, registered in the bench home
OPENVINO_MODEL = f"{MODEL}-openvino"  # the same files, model.json asking for OpenVINO
DEFAULT_HOME = Path.home() / ".cache" / "ember-bench"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    parser.add_argument("--peers", default="st,llamacpp", help="comma list: st, llamacpp")
    parser.add_argument("--st-python", help="Python with torch and sentence-transformers")
    parser.add_argument("--llama-python", help="Python with llama-cpp-python[server]")
    parser.add_argument("--gguf", type=Path, help="the model as GGUF (made if missing)")
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME / "home", help="EMBER_HOME")
    parser.add_argument("--wheel", type=Path, help="model wheel for an offline first pull")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument(
        "--pause", type=float, default=0.3, help="seconds between turns (default 0.3)"
    )
    parser.add_argument(
        "--no-int8", action="store_true", help="skip Ember's int8 variant (batch workloads)"
    )
    parser.add_argument(
        "--no-openvino", action="store_true", help="skip the opt-in OpenVINO runtime"
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the CPUs to be idle (shared machines)",
    )
    return parser.parse_args()


def graph_code_digest() -> str:
    """A digest of the code that turns a checkpoint into Ember's graphs (and their int8 copy)."""
    import ember.engines.onnx_graphs as graphs
    import ember.models.hf_folder as hf_folder

    sources = [*sorted(Path(graphs.__file__).parent.glob("*.py")), Path(hf_folder.__file__)]
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def drop_stale_graphs(home: Path) -> None:
    """Remove the bench home's models when other code built their graphs, so that they are
    built again: the bench home outlives checkouts, and a run measured the graphs of whichever
    checkout pulled the model first."""
    stamp = home / "graphs.digest"
    current = graph_code_digest()
    if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == current:
        return
    for name in (MODEL, INT8_MODEL, OPENVINO_MODEL):
        shutil.rmtree(home / "models" / name, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    stamp.write_text(current + "\n", encoding="utf-8")


def ensure_model(home: Path, wheel: Path | None) -> Path:
    """The model's folder in `home`, pulled first if absent or built by other graph code."""
    drop_stale_graphs(home)
    folder = home / "models" / MODEL
    if not (folder / "model.json").is_file():
        command = [sys.executable, "-m", "ember", "models", "pull", MODEL, "--home", str(home)]
        if wheel is not None:
            command += ["--wheel", str(wheel)]
        subprocess.run(command, check=True, timeout=900)
    return folder


def ensure_int8(home: Path, model_folder: Path) -> None:
    """The model's int8 variant, as `ember models add --quantize int8` makes it, once."""
    if (home / "models" / INT8_MODEL / "model.json").is_file():
        return
    print(f"quantising {MODEL} to int8…", file=sys.stderr)
    command = [sys.executable, "-m", "ember", "models", "add", str(model_folder)]
    command += ["--id", INT8_MODEL, "--quantize", "int8", "--home", str(home)]
    subprocess.run(command, check=True, timeout=900)


def ensure_openvino(home: Path, model_folder: Path) -> bool:
    """The model's files under a second id whose model.json sets `runtime: openvino`, as a user
    opts in; False when this Python lacks the openvino package (the `openvino` extra)."""
    if importlib.util.find_spec("openvino") is None:
        return False
    folder = home / "models" / OPENVINO_MODEL
    folder.mkdir(parents=True, exist_ok=True)
    for item in model_folder.iterdir():
        link = folder / item.name
        if item.name == "model.json" or link.exists():
            continue
        if item.name.endswith(".data"):  # OpenVINO refuses external data linked from outside
            os.link(item, link)
        else:
            link.symlink_to(item)
    settings = json.loads((model_folder / "model.json").read_text(encoding="utf-8"))
    settings.update(id=OPENVINO_MODEL, runtime="openvino", aliases=[])  # the names stay MiniLM's
    (folder / "model.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return True


def int8_min_cosine(base_url: str) -> float | None:
    card = httpx.get(f"{base_url}/v1/models/{INT8_MODEL}", timeout=30).json()
    value = card.get("int8_min_cosine")
    return float(value) if value is not None else None


def ensure_gguf(args: argparse.Namespace, model_folder: Path) -> Path:
    gguf: Path = args.gguf or DEFAULT_HOME / f"{MODEL}-f32.gguf"
    if not gguf.is_file():
        if not args.st_python:
            raise SystemExit(f"{gguf} is missing; making it needs --st-python (torch)")
        print(f"converting {MODEL} to {gguf}…", file=sys.stderr)
        convert(model_folder, gguf, args.st_python, args.llama_python, "f32")
    return gguf


def quiet_peak(attempts: int = 4) -> float:
    """The SGEMM peak, measured again (after waiting for idle) while others take the CPUs."""
    monitor = OthersMonitor()
    for _ in range(attempts):
        monitor.mark()
        peak = measure_peak()
        if monitor.others_share() <= 0.05:
            break
        wait_until_idle(60, quiet_seconds=2)
    return peak


def cosine(left: np.ndarray, right: np.ndarray) -> float:
    return float(np.dot(left, right) / (np.linalg.norm(left) * np.linalg.norm(right)))


@contextlib.contextmanager
def started_systems(
    args: argparse.Namespace,
    model_folder: Path,
    workloads: list[Workload],
    log_dir: Path,
    extras: Extras,
) -> Iterator[list[System]]:
    peers = {name.strip() for name in args.peers.split(",") if name.strip()}
    systems: list[System] = []
    servers: dict[str, ServerProcess] = {}
    try:
        servers[EMBER] = start_ember(args.home, log_dir, MODEL)
        ember = HttpSystem(EMBER, servers[EMBER].base_url, MODEL)
        ember.watch_memory(servers[EMBER].memory)
        systems += [ember, EngineSystem(model_folder, ENGINE)]
        if not args.no_int8:
            ensure_int8(args.home, model_folder)
            servers[EMBER_INT8] = start_ember(args.home, log_dir, INT8_MODEL)
            systems.append(
                HttpSystem(EMBER_INT8, servers[EMBER_INT8].base_url, INT8_MODEL, batches_only=True)
            )
            extras.int8_min_cosine = int8_min_cosine(servers[EMBER_INT8].base_url)
        if not args.no_openvino:
            if ensure_openvino(args.home, model_folder):
                servers[EMBER_OPENVINO] = start_ember(args.home, log_dir, OPENVINO_MODEL)
                openvino = HttpSystem(
                    EMBER_OPENVINO, servers[EMBER_OPENVINO].base_url, OPENVINO_MODEL
                )
                openvino.watch_memory(servers[EMBER_OPENVINO].memory)
                systems.append(openvino)
            else:
                extras.notes.append("OpenVINO runtime not measured: openvino is not installed")
        if "st" in peers:
            systems.append(
                st_peer.SentenceTransformersSystem(args.st_python, model_folder, workloads)
            )
        if "llamacpp" in peers:
            servers[LLAMA] = start_llama(
                args.llama_python, ensure_gguf(args, model_folder), log_dir
            )
            llama = HttpSystem(LLAMA, servers[LLAMA].base_url, MODEL_ALIAS)
            llama.watch_memory(servers[LLAMA].memory)
            systems.append(llama)
        yield systems
    finally:
        for system in systems:
            with contextlib.suppress(Exception):
                system.close()
        for server in servers.values():
            server.stop()


def cold_starts(
    args: argparse.Namespace, model_folder: Path, extras: Extras, repeats: int, log_dir: Path
) -> None:
    """Alternating cold starts: Ember, then each peer, `repeats` times."""
    peers = {name.strip() for name in args.peers.split(",")}
    env = dict(os.environ)

    def record(system: str, seconds: float, memory: Memory | None) -> None:
        extras.cold_starts.setdefault(system, []).append(seconds)
        if memory is not None:
            extras.memory_at_start[system] = memory

    for _ in range(repeats):
        port = free_port()
        command = ember_command(sys.executable, args.home, port)
        cold = cold_start("ember-cold", command, port, MODEL, log_dir, ember_environment())
        record(EMBER, *cold)
        if "st" in peers:
            record(ST, *st_peer.cold_start(args.st_python, model_folder))
        if "llamacpp" in peers:
            port = free_port()
            command = llama_command(args.llama_python, ensure_gguf(args, model_folder), port)
            record(LLAMA, *cold_start("llama-cold", command, port, MODEL_ALIAS, log_dir, env))


def main() -> None:
    args = parse_arguments()
    peers = {name.strip() for name in args.peers.split(",") if name.strip()}
    if "st" in peers and not args.st_python:
        raise SystemExit("--peers st needs --st-python (a Python with sentence-transformers)")
    if "llamacpp" in peers and not args.llama_python:
        raise SystemExit("--peers llamacpp needs --llama-python (a Python with llama-cpp-python)")
    plan = Plan(rounds=3, queries_per_round=30, retry_budget_seconds=120) if args.quick else Plan()
    plan = replace(plan, pause_seconds=args.pause)
    model_folder = ensure_model(args.home, args.wheel)
    workloads = build_workloads(model_folder / "tokenizer.json")
    shape = EncoderShape.from_config(model_folder / "config.json")
    extras = Extras()
    if args.wait_idle > 0:
        wait_until_idle(args.wait_idle)
    busy_before = busy_share()
    print("measuring the fp32 peak…", file=sys.stderr)
    extras.peak_flops.append(quiet_peak())
    with tempfile.TemporaryDirectory(prefix="ember-bench-") as scratch:
        log_dir = Path(scratch)
        with started_systems(args, model_folder, workloads, log_dir, extras) as systems:
            reference = systems[0].first_vector(workloads[2])
            for system in systems[1:]:
                agreement = cosine(reference, system.first_vector(workloads[2]))
                extras.notes.append(f"{system.name} vs Ember, same passage: cosine {agreement:.4f}")
            print(f"measuring {len(workloads)} workloads, {plan.rounds} rounds…", file=sys.stderr)
            results = measure(systems, grouped(workloads), plan, peak=measure_peak)
            for system in systems:
                memory = system.memory()
                if memory is not None:
                    extras.memory_after[system.name] = memory
        print("measuring cold starts…", file=sys.stderr)
        cold_starts(args, model_folder, extras, 2 if args.quick else 5, log_dir)
    extras.peak_flops.append(quiet_peak())
    extras.notes.append(
        f"CPUs {busy_before:.0%} busy just before the run, {busy_share():.0%} just after; "
        f"1-minute load average {os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} CPUs "
        "(anything much above 0 means other processes shared the cores)"
    )
    report = render(results, workloads, shape, extras)
    print(report)
    if args.out is not None:
        args.out.write_text(report + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
