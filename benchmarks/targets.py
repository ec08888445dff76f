"""The issue's targets, checked against one run's figures (all through Ember's HTTP server)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from cost import EncoderShape
from measure import Results, p50_seconds, texts_per_second, tokens_ratio
from stats import median
from systems import Memory
from workloads import Workload

EMBER = "Ember"
EMBER_INT8 = "Ember int8"
EMBER_OPENVINO = "Ember OpenVINO"  # the opt-in runtime (model.json "runtime": "openvino")
ENGINE = "Ember engine"
ST = "sentence-transformers"
LLAMA = "llama.cpp server"
PEERS = (ST, LLAMA)
MB = 1024 * 1024


@dataclass
class Extras:
    """What the run measured besides the workloads."""

    peak_flops: list[float] = field(default_factory=list)
    cold_starts: dict[str, list[float]] = field(default_factory=dict)
    memory_at_start: dict[str, Memory] = field(default_factory=dict)
    memory_after: dict[str, Memory] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    int8_min_cosine: float | None = None  # as the server reports it in /v1/models

    @property
    def peak(self) -> float:
        return max(self.peak_flops)


def advantage(results: Results, workload: str, peer: str, kind: str) -> float | None:
    """Ember's advantage over `peer`, round by round (see Results.paired): tokens/s over
    tokens/s, or for a single query the peer's p50 over Ember's."""
    if kind == "query":
        return results.paired(
            (workload, peer),
            (workload, EMBER),
            lambda theirs, ours: p50_seconds(theirs) / p50_seconds(ours),
        )
    return results.paired((workload, EMBER), (workload, peer), tokens_ratio)


def _down(value: float | None, places: int) -> float:
    """`value` cut (not rounded) to `places` decimals: 1.5996x must not print as 1.60x beside
    a NO for a 1.6x floor."""
    return math.floor((value or 0) * 10.0**places + 1e-9) / 10.0**places


def _up(value: float | None, places: int) -> float:
    """`value` raised to `places` decimals, for a ceiling: +1.004 ms prints +1.01."""
    return math.ceil((value or 0) * 10.0**places - 1e-9) / 10.0**places


def _row(name: str, value: float | None, shown: str, met: bool) -> list[str]:
    if value is None:
        return [name, "not measured", "n/a"]
    return [name, shown, "yes" if met else "NO"]


def target_rows(
    results: Results, extras: Extras, shape: EncoderShape, workloads: Sequence[Workload]
) -> list[list[str]]:
    rows = []
    for workload in ("sentences", "passages", "mixed"):
        value = advantage(results, workload, ST, "batch")
        rows.append(
            _row(
                f"{workload}: >= 1.6x sentence-transformers",
                value,
                f"{_down(value, 2):.2f}x",
                (value or 0) >= 1.6,
            )
        )
    for workload, floor in (("passages", 3.0), ("sentences", 4.0)):
        value = advantage(results, workload, LLAMA, "batch")
        rows.append(
            _row(
                f"{workload}: >= {floor:.0f}x llama.cpp server",
                value,
                f"{_down(value, 2):.2f}x",
                (value or 0) >= floor,
            )
        )
    by_name = {workload.name: workload for workload in workloads}
    for system, label in ((EMBER, "passages"), (EMBER_OPENVINO, "passages, OpenVINO (opt-in)")):
        passages = results.summary("passages", system)
        if passages is None and system != EMBER:
            continue
        share = None
        if passages is not None and "passages" in by_name:
            tokens = by_name["passages"].tokens
            peak = results.highest_peak(extras.peak_flops)
            share = passages.tokens_per_second * shape.flops(tokens) / sum(tokens) / peak
        name = f"{label}: >= 80% of fp32 peak"
        if share is not None and share > 1.0:  # the peak run was slowed by other processes
            rows.append([name, f"{share:.0%}: peak disturbed", "n/a"])
        else:
            rows.append(_row(name, share, f"{_down(share, 3):.1%}", (share or 0) >= 0.8))
    value = results.paired(("mixed", EMBER), ("mixed_control", EMBER), tokens_ratio)
    rows.append(
        _row(
            "mixed lengths: >= 90% of same-length tokens/s",
            value,
            f"{_down(value, 3):.1%}",
            (value or 0) >= 0.9,
        )
    )
    value = results.paired(
        ("concurrent64", EMBER),
        ("single64", EMBER),
        lambda burst, single: texts_per_second(burst) / texts_per_second(single),
    )
    rows.append(
        _row(
            "64 clients: >= 70% of one 64-text request",
            value,
            f"{_down(value, 3):.1%}",
            (value or 0) >= 0.7,
        )
    )
    value = results.paired(
        ("query", EMBER),
        ("query", ENGINE),
        lambda server, engine: (p50_seconds(server) - p50_seconds(engine)) * 1000,
    )
    rows.append(
        _row(
            "1 query (http.client): p50 <= engine p50 + 1 ms",
            value,
            f"+{_up(value, 2):.2f} ms",
            (value or 0) <= 1.0,
        )
    )
    rows.append(_int8_row(results, extras))
    starts = extras.cold_starts.get(EMBER)
    value = median(starts) if starts else None
    rows.append(_row("cold start <= 1.5 s", value, f"{value or 0:.2f} s", (value or 0) <= 1.5))
    memory = extras.memory_after.get(EMBER)
    value = memory.rss_bytes / MB if memory else None
    rows.append(
        _row("RSS <= 400 MB (after the run)", value, f"{value or 0:.0f} MB", (value or 0) <= 400)
    )
    return rows


def _int8_row(results: Results, extras: Extras) -> list[str]:
    """The int8 variant's speed-up: the smaller of its sentences and passages ratios."""
    ratios = [
        results.paired((workload, EMBER_INT8), (workload, EMBER), tokens_ratio)
        for workload in ("sentences", "passages")
    ]
    name = "int8: >= 1.6x fp32 at min cosine >= 0.999"
    if None in ratios or extras.int8_min_cosine is None:
        return _row(name, None, "", False)
    value = min(r for r in ratios if r is not None)
    cosine = extras.int8_min_cosine
    shown = f"{_down(value, 2):.2f}x, min cosine {_down(cosine, 5):.5f}"
    return _row(name, value, shown, value >= 1.6 and cosine >= 0.999)
