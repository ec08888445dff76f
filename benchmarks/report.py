"""The printed report: one Markdown table of workloads, one of start-up and memory, the targets.

Ratios are Ember's advantage over a peer measured in the same run: tokens/s over tokens/s for
throughput workloads, the peer's p50 over Ember's p50 for the one-query workload, taken round
by round and the median kept (Results.paired). Above 1.0x Ember is faster.
"""

from __future__ import annotations

from collections.abc import Sequence

from cost import EncoderShape
from measure import Results
from stats import median
from targets import EMBER, EMBER_INT8, MB, PEERS, Extras, advantage, target_rows
from workloads import Workload


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
            + " |"
        )

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if seconds >= 0.01 else f"{seconds * 1000:.2f}"


def _times(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def workload_rows(
    results: Results, workloads: Sequence[Workload], shape: EncoderShape, peak: float
) -> list[list[str]]:
    rows = []
    for workload in workloads:
        flops_per_token = shape.flops(workload.tokens) / workload.total_tokens
        first = True
        for system in results.rounds.get(workload.name, {}):
            summary = results.summary(workload.name, system)
            assert summary is not None
            ratios = ["", ""]
            if system == EMBER:
                ratios = [
                    _times(advantage(results, workload.name, peer, workload.kind)) for peer in PEERS
                ]
            share = summary.tokens_per_second * flops_per_token / peak
            rows.append(
                [
                    workload.title if first else "",
                    system,
                    f"{summary.tokens_per_second:,.0f}",
                    f"{summary.texts_per_second:,.1f}",
                    _ms(summary.p50_seconds),
                    _ms(summary.p99_seconds),
                    f"{share:.0%}" if system != EMBER_INT8 else "(int8)",
                    *ratios,
                ]
            )
            first = False
    return rows


def startup_rows(extras: Extras) -> list[list[str]]:
    systems = list(dict.fromkeys([*extras.cold_starts, *extras.memory_after]))
    rows = []
    for system in systems:
        starts = extras.cold_starts.get(system, [])
        at_start = extras.memory_at_start.get(system)
        after = extras.memory_after.get(system)
        rows.append(
            [
                system,
                f"{median(starts):.2f} ({min(starts):.2f}-{max(starts):.2f})" if starts else "",
                f"{at_start.rss_bytes / MB:.0f}" if at_start else "",
                f"{after.rss_bytes / MB:.0f}" if after else "",
                f"{after.hwm_bytes / MB:.0f}" if after else "",
            ]
        )
    return rows


def render(
    results: Results, workloads: Sequence[Workload], shape: EncoderShape, extras: Extras
) -> str:
    peak = results.highest_peak(extras.peak_flops)
    peaks = ", ".join(f"{value / 1e9:.0f}" for value in extras.peak_flops)
    around = (
        ", ".join(f"{value / 1e9:.0f}" for value in dict.fromkeys(results.peaks.values()))
        or "not measured"
    )
    header = [
        "workload",
        "system",
        "tokens/s",
        "texts/s",
        "p50 ms",
        "p99 ms",
        "% fp32 peak",
        "vs ST",
        "vs llama.cpp",
    ]
    parts = [
        f"fp32 peak (numpy SGEMM, 2 threads): {peak / 1e9:.0f} GFLOP/s, the run's highest, "
        f"which every % of peak is of (start and end: {peaks}; around each workload: {around}); "
        f"MiniLM {shape.layers}x{shape.hidden}/{shape.intermediate}: "
        f"{2 * shape.matmul_weights / 1e6:.1f} MFLOP/token + attention 4*n*H*L",
        "",
        table(header, workload_rows(results, workloads, shape, peak)),
        "",
        table(
            [
                "system",
                "cold start s (min-max)",
                "RSS MB at 1st vector",
                "RSS MB after",
                "peak RSS MB",
            ],
            startup_rows(extras),
        ),
        "",
        table(["target", "measured", "met"], target_rows(results, extras, shape, workloads)),
    ]
    notes = [
        *extras.notes,
        *client_cpu_notes(results, workloads),
        *others_notes(results, workloads),
    ]
    if notes:
        parts += ["", *(f"note: {note}" for note in notes)]
    return "\n".join(parts)


def client_cpu_notes(results: Results, workloads: Sequence[Workload]) -> list[str]:
    """The benchmark's own CPU per concurrent burst: on 2 cores it competes with the server."""
    notes = []
    for workload in workloads:
        for system in results.rounds.get(workload.name, {}):
            summary = results.summary(workload.name, system)
            if summary is not None and summary.client_cpu_seconds is not None:
                notes.append(
                    f"{workload.title}, {system}: the clients used "
                    f"{summary.client_cpu_seconds * 1000:.0f} ms of CPU per burst"
                )
    return notes


def others_notes(results: Results, workloads: Sequence[Workload], floor: float = 0.02) -> list[str]:
    """Where processes outside the benchmark took CPU during kept rounds."""
    notes = []
    for workload in workloads:
        shares = {
            system: summary.others_share
            for system in results.rounds.get(workload.name, {})
            if (summary := results.summary(workload.name, system)) is not None
        }
        worst = max(shares.values(), default=0.0)
        if worst > floor:
            notes.append(
                f"{workload.title}: other processes took up to {worst:.0%} of the CPUs "
                "in a kept round"
            )
    return notes
