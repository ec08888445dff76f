"""sentence-transformers worker: run with the peer's own Python (torch lives there, not in Ember).

Protocol, one JSON object a line. It prints {"ready": ..., "load_seconds": ...} once the model
is loaded, then answers each request on stdin:

    {"op": "define", "name": N, "texts": [...]}        -> {"ok": true}
    {"op": "encode", "name": N, "batch_size": B}       -> {"seconds": s, "count": c, "dims": d,
                                                           "first": [...]}
    {"op": "queries", "name": N, "count": K}           -> {"latencies": [...]}   (one text each)
    {"op": "rss"}                                      -> {"rss_bytes": r, "hwm_bytes": h}
    {"op": "quit"}                                     -> exits

With --cold-start it loads, embeds one sentence, prints {"first_vector": true, "rss_bytes": r,
"hwm_bytes": h} and exits, so the parent can time process start to first vector.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def memory() -> dict[str, int]:
    fields: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return {"rss_bytes": fields["VmRSS"], "hwm_bytes": fields["VmHWM"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="sentence-transformers model folder")
    parser.add_argument("--cold-start", action="store_true")
    args = parser.parse_args()
    protocol = sys.stdout
    sys.stdout = sys.stderr  # libraries may print; only protocol lines go to the real stdout

    def reply(payload: dict[str, Any]) -> None:
        protocol.write(json.dumps(payload) + "\n")
        protocol.flush()

    started = time.perf_counter()
    from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]

    model = SentenceTransformer(args.model, device="cpu")
    if args.cold_start:
        model.encode(["The first vector after a cold start."])
        reply({"first_vector": True, **memory()})
        return
    model.encode(["warm up"] * 4)
    reply({"ready": True, "load_seconds": time.perf_counter() - started})
    texts: dict[str, list[str]] = {}
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "define":
            texts[request["name"]] = request["texts"]
            reply({"ok": True})
        elif op == "encode":
            batch = texts[request["name"]]
            began = time.perf_counter()
            vectors = model.encode(
                batch, batch_size=request["batch_size"], normalize_embeddings=True
            )
            seconds = time.perf_counter() - began
            reply(
                {
                    "seconds": seconds,
                    "count": len(vectors),
                    "dims": int(vectors.shape[1]),
                    "first": vectors[0].tolist(),
                }
            )
        elif op == "queries":
            (text,) = texts[request["name"]]
            latencies = []
            for _ in range(request["count"]):
                began = time.perf_counter()
                model.encode([text], normalize_embeddings=True)
                latencies.append(time.perf_counter() - began)
            reply({"latencies": latencies})
        elif op == "rss":
            reply(memory())
        elif op == "quit":
            return
        else:
            reply({"error": f"unknown op {op}"})


if __name__ == "__main__":
    main()
