"""int8 against fp32 for one Hugging Face folder (mean-pooled, normalised, as MiniLM and MPNet
are): fidelity, then tokens/s side by side.

    .venv/bin/python benchmarks/quantize_bench.py [MODEL_DIR] [--rounds 7] [--threads 2]
        [--int8-threads 1] [--extra NAME=PATH.onnx ...]

Builds the fp32 graph Ember registers, quantises it with `quantize_int8`, and prints the cosine
of int8 vectors to fp32 ones over the fixture texts, held-out texts and ~300 generated
sentences, then tokens/s for each graph at two batch shapes, runs alternating (A B A B) so
both see the same machine. Each graph runs as Ember's server runs it: fp32 as one call on
`--threads` threads, int8 graphs as `--threads / --int8-threads` calls at once (engine lanes,
see OnnxEngine), so a round is that many batches. Wall-clock tokens/s is what a server gets;
CPU tokens/s (tokens per CPU-second of this process) is steadier when other processes share
the cores. `--extra` adds other ONNX files to the comparison (fidelity and speed; they run as
int8 graphs do).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from machine import busy_share
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from ember.engines.onnx import session_options
from ember.engines.onnx_graphs.quantize import (
    CALIBRATION_TEXTS,
    FIDELITY_TEXTS,
    METADATA_CALIBRATION_COSINE,
    METADATA_FP32_INPUTS,
    measure_fidelity,
    quantize_int8,
)
from ember.models.hf_folder import architecture_of

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
DEFAULT_MODEL = Path("/work/cache/models/all-MiniLM-L6-v2")
SHAPES = ((64, 128), (256, 16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--rounds", type=int, default=7, help="timed runs per graph and shape")
    parser.add_argument("--threads", type=int, default=2, help="cores to use, as serving")
    parser.add_argument(
        "--int8-threads", type=int, default=1, help="threads per lane for int8 graphs"
    )
    parser.add_argument("--extra", action="append", default=[], help="NAME=PATH.onnx to add")
    args = parser.parse_args()

    tokenizer = Tokenizer.from_file(str(args.model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=256)

    def ids(texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in tokenizer.encode_batch(texts)]

    config = json.loads((args.model_dir / "config.json").read_text(encoding="utf-8"))
    weights = load_file(str(args.model_dir / "model.safetensors"))
    architecture = architecture_of(config, args.model_dir)
    fp32 = architecture.build(config, weights, pooling="mean", normalize=True)
    # int8 starts from the graph built for it, as `ember models add --quantize int8` does.
    options = architecture.int8_build_options
    source = architecture.build(config, weights, pooling="mean", normalize=True, **options)
    started = time.perf_counter()
    int8 = quantize_int8(source, ids(list(CALIBRATION_TEXTS)))
    metadata = {entry.key: entry.value for entry in int8.metadata_props}
    print(f"quantize_int8: {time.perf_counter() - started:.1f} s")
    print(f"  calibration min cosine {metadata[METADATA_CALIBRATION_COSINE]}")
    print(f"  inputs kept fp32: {metadata[METADATA_FP32_INPUTS] or 'none'}")

    graphs: dict[str, onnx.ModelProto] = {"fp32": fp32, "int8": int8}
    for extra in args.extra:
        name, path = extra.split("=", 1)
        graphs[name] = onnx.load(path)

    fixtures = json.loads((FIXTURES / "texts.json").read_text(encoding="utf-8"))
    long_texts = json.loads((FIXTURES / "long_texts.json").read_text(encoding="utf-8"))
    text_sets = {
        "fixtures": ids(fixtures + long_texts),
        "held-out": ids(list(FIDELITY_TEXTS)),
        "generated": ids(generated_sentences(fixtures + long_texts)),
    }
    print("\ncosine to fp32 (min / mean)")
    print(f"| graph | {' | '.join(text_sets)} |")
    print(f"|---|{'---|' * len(text_sets)}")
    for name, graph in graphs.items():
        if name == "fp32":
            continue
        cells = []
        for token_ids in text_sets.values():
            fidelity = measure_fidelity(fp32, graph, token_ids)
            cells.append(f"{fidelity.min_cosine:.5f} / {fidelity.mean_cosine:.6f}")
        print(f"| {name} | {' | '.join(cells)} |")

    lanes = max(1, args.threads // args.int8_threads)
    layouts = {
        name: (1, args.threads) if name == "fp32" else (lanes, args.threads // lanes)
        for name in graphs
    }
    print(
        f"\nthroughput on {args.threads} cores (fp32: 1 call x {args.threads} threads; others: "
        f"{lanes} calls at once x {args.threads // lanes}), {args.rounds} alternating rounds"
    )
    print(f"CPU busy before: {busy_share():.0%}")
    results = throughput(graphs, layouts, args.rounds)
    print(f"CPU busy after: {busy_share():.0%}")
    header = " | ".join(f"{b}x{s} wall | {b}x{s} CPU" for b, s in SHAPES)
    print(f"| graph | {header} |")
    print(f"|---|{'---|' * 2 * len(SHAPES)}")
    for name, by_shape in results.items():
        cells = []
        for shape in SHAPES:
            for kind in ("wall", "cpu"):
                value, base = by_shape[shape][kind], results["fp32"][shape][kind]
                cells.append(f"{value:,.0f} ({value / base:.2f}x)")
        print(f"| {name} | {' | '.join(cells)} |")


def generated_sentences(texts: list[str], count: int = 300, seed: int = 1234) -> list[str]:
    """Word runs of varied length (1 to 180 words) drawn from the fixtures, mostly in order."""
    rng = random.Random(seed)
    words = " ".join(texts).split()
    sentences = []
    for _ in range(count):
        length = rng.choice([1, 2, 3, 5, 8, 12, 20, 35, 60, 100, 180])
        start = rng.randrange(len(words))
        sentences.append(
            " ".join(
                words[(start + offset) % len(words)] if rng.random() < 0.7 else rng.choice(words)
                for offset in range(length)
            )
        )
    return sentences


def session(graph: onnx.ModelProto, threads: int) -> Any:
    """Options as Ember's OnnxEngine sets them."""
    return ort.InferenceSession(
        graph.SerializeToString(),
        sess_options=session_options(threads),
        providers=["CPUExecutionProvider"],
    )


def throughput(
    graphs: dict[str, onnx.ModelProto], layouts: dict[str, tuple[int, int]], rounds: int
) -> dict[str, dict[tuple[int, int], dict[str, float]]]:
    """Median tokens/s (wall and per CPU-second) per graph and shape, runs interleaved;
    `layouts` gives each graph's (calls at once, threads per call)."""
    sessions = {name: session(graph, layouts[name][1]) for name, graph in graphs.items()}
    pool = ThreadPoolExecutor(max(lanes for lanes, _ in layouts.values()))

    def run(name: str, feed: dict[str, Any]) -> None:
        calls = [pool.submit(sessions[name].run, None, feed) for _ in range(layouts[name][0])]
        for call in calls:
            call.result()

    rng = np.random.default_rng(0)
    feeds = {}
    for batch, length in SHAPES:
        ids = rng.integers(1000, 29000, size=(batch, length), dtype=np.int64)
        ids[:, 0], ids[:, -1] = 101, 102
        feeds[(batch, length)] = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    samples: dict[str, dict[tuple[int, int], dict[str, list[float]]]] = {
        name: {shape: {"wall": [], "cpu": []} for shape in SHAPES} for name in graphs
    }
    for name in sessions:
        for feed in feeds.values():
            run(name, feed)
    for _ in range(rounds):
        for shape, feed in feeds.items():
            for name in sessions:
                tokens = shape[0] * shape[1] * layouts[name][0]
                wall, cpu = time.perf_counter(), time.process_time()
                run(name, feed)
                samples[name][shape]["wall"].append(tokens / (time.perf_counter() - wall))
                samples[name][shape]["cpu"].append(tokens / (time.process_time() - cpu))
    pool.shutdown()
    return {
        name: {
            shape: {kind: median(values) for kind, values in by_kind.items()}
            for shape, by_kind in by_shape.items()
        }
        for name, by_shape in samples.items()
    }


if __name__ == "__main__":
    main()
