"""The measurement loop: every workload, every system, alternating A B A B, then medians.

Each workload first gets one untimed warm-up round per system (arenas, caches, connection
pools). Then for each round every system runs once in turn, with a short pause between turns
so one system's spinning threads do not steal the next one's cores. Workloads compared with
each other (the mixed corpus and its same-length control; one 64-text request and 64 clients)
share rounds, so a slow spell of the machine hits both alike.

On a shared machine a turn during which other processes used more than a set share of the
CPUs is thrown away and run again once the machine is idle, a few times per turn and within a
time budget for the whole run (a machine that stays busy is measured busy, not waited on for
hours); the share is kept with each round and the report shows the worst kept.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from machine import OthersMonitor, wait_until_idle
from stats import median, percentile
from systems import System
from workloads import Workload


@dataclass(frozen=True)
class Plan:
    """How long to measure: rounds per workload, queries per query round, pause per turn."""

    rounds: int = 7
    queries_per_round: int = 100
    pause_seconds: float = 0.3
    max_others_share: float = 0.1
    retries: int = 3
    idle_wait_seconds: float = 30.0
    retry_budget_seconds: float = 600.0


@dataclass(frozen=True)
class Round:
    """One system's turn on one workload."""

    seconds: float
    latencies: list[float]
    texts: int
    tokens: int
    client_cpu_seconds: float | None = None
    others_share: float = 0.0


@dataclass(frozen=True)
class Summary:
    """Medians over rounds (throughput) and percentiles over every request (latency)."""

    tokens_per_second: float
    texts_per_second: float
    p50_seconds: float
    p99_seconds: float
    rounds: int
    client_cpu_seconds: float | None
    others_share: float


@dataclass
class Results:
    """Rounds by workload name, then by system name, in the order they ran; and the fp32
    peak measured just before and just after each workload's group, the higher kept."""

    rounds: dict[str, dict[str, list[Round]]] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)

    def add(self, workload: str, system: str, result: Round) -> None:
        self.rounds.setdefault(workload, {}).setdefault(system, []).append(result)

    def summary(self, workload: str, system: str) -> Summary | None:
        rounds = self.rounds.get(workload, {}).get(system)
        if not rounds:
            return None
        latencies = [latency for result in rounds for latency in result.latencies]
        cpu = [result.client_cpu_seconds for result in rounds if result.client_cpu_seconds]
        return Summary(
            tokens_per_second=median([tokens_per_second(result) for result in rounds]),
            texts_per_second=median([texts_per_second(result) for result in rounds]),
            p50_seconds=percentile(latencies, 0.5),
            p99_seconds=percentile(latencies, 0.99),
            rounds=len(rounds),
            client_cpu_seconds=median(cpu) if cpu else None,
            others_share=max(result.others_share for result in rounds),
        )

    def highest_peak(self, others: Sequence[float]) -> float:
        """The highest fp32 peak of the run: around any group, or in `others` (its start and
        end). A peak measured in a slow spell of the host would flatter the workloads beside it
        (a 215 GFLOP/s reading against 307 elsewhere in one run put passages at 92%), so every
        share is taken of the highest."""
        return max([*others, *self.peaks.values()])

    def paired(
        self,
        first: tuple[str, str],
        second: tuple[str, str],
        compare: Callable[[Round, Round], float],
    ) -> float | None:
        """Median over rounds of `compare(first's round, second's round)`, each a (workload,
        system) whose i-th rounds ran back to back in one alternation; None if either is missing.

        The host's speed drifts by up to 1.5x over minutes, so a comparison of two medians taken
        over the whole run can pair one system's fast minutes with another's slow ones; a round
        pair shares its minute.
        """
        rounds = [self.rounds.get(workload, {}).get(system) for workload, system in (first, second)]
        if not rounds[0] or not rounds[1]:
            return None
        return median([compare(a, b) for a, b in zip(rounds[0], rounds[1], strict=False)])


def tokens_per_second(result: Round) -> float:
    return result.tokens / result.seconds


def tokens_ratio(first: Round, second: Round) -> float:
    """How many times `first`'s tokens/s `second`'s is."""
    return tokens_per_second(first) / tokens_per_second(second)


def texts_per_second(result: Round) -> float:
    return result.texts / result.seconds


def p50_seconds(result: Round) -> float:
    return median(result.latencies)


def one_round(system: System, workload: Workload, plan: Plan) -> Round | None:
    """Run the workload once on the system; None when the system cannot run this kind."""
    if workload.kind == "query":
        latencies = system.queries(workload, plan.queries_per_round)
        if latencies is None:
            return None
        count = len(latencies)
        return Round(sum(latencies), latencies, count, count * workload.total_tokens)
    if workload.kind == "batch":
        seconds = system.batch(workload)
        return Round(seconds, [seconds], len(workload.texts), workload.total_tokens)
    burst = system.concurrent(workload)
    if burst is None:
        return None
    return Round(
        burst.seconds,
        burst.latencies,
        len(workload.texts),
        workload.total_tokens,
        burst.client_cpu_seconds,
    )


@dataclass
class RetryBudget:
    """Seconds the run may still spend on repeating disturbed turns."""

    seconds: float


def turn(
    system: System, workload: Workload, plan: Plan, monitor: OthersMonitor, budget: RetryBudget
) -> Round:
    """One measured round, repeated while other processes took too much of the CPUs."""
    for attempt in range(plan.retries + 1):
        time.sleep(plan.pause_seconds)
        monitor.mark()
        started = time.perf_counter()
        result = one_round(system, workload, plan)
        assert result is not None
        share = monitor.others_share()
        if share <= plan.max_others_share or attempt == plan.retries or budget.seconds <= 0:
            return replace(result, others_share=share)
        print(f"    {system.name}: others took {share:.0%} of the CPUs, again", file=sys.stderr)
        wait_until_idle(min(plan.idle_wait_seconds, budget.seconds), quiet_seconds=2)
        budget.seconds -= time.perf_counter() - started
    raise AssertionError("unreachable")


def measure(
    systems: Sequence[System],
    groups: Sequence[Sequence[Workload]],
    plan: Plan,
    peak: Callable[[], float] | None = None,
) -> Results:
    """Every group of workloads in turn: warm-up, then `plan.rounds` alternating rounds.

    `peak` measures the fp32 peak around each group: the machine's speed drifts when it is
    a virtual machine whose neighbours are invisible to it, so the report shows each group's
    peak beside the run's highest, which every share is taken of (see Results.highest_peak).
    """
    results = Results()
    monitor = OthersMonitor()
    budget = RetryBudget(plan.retry_budget_seconds)
    for group in groups:
        before = peak() if peak is not None else 0.0
        started = time.perf_counter()
        able = {
            workload.name: [
                system for system in systems if one_round(system, workload, plan) is not None
            ]
            for workload in group
        }
        for _ in range(plan.rounds):
            for workload in group:
                for system in able[workload.name]:
                    results.add(
                        workload.name, system.name, turn(system, workload, plan, monitor, budget)
                    )
        took = time.perf_counter() - started
        if peak is not None:
            around = max(before, peak())
            results.peaks.update(dict.fromkeys((workload.name for workload in group), around))
        titles = ", ".join(workload.title for workload in group)
        print(f"  {titles}: {took:.1f} s", file=sys.stderr)
    return results
