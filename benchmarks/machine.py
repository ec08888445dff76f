"""How busy the machine is: benchmarks on a shared machine should start when it is idle."""

from __future__ import annotations

import os
import sys
import time


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from /proc/stat (Linux)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_share(seconds: float = 1.0) -> float:
    """Share of all CPU time spent busy over the next `seconds` (0..1)."""
    busy_before, total_before = _cpu_times()
    time.sleep(seconds)
    busy_after, total_after = _cpu_times()
    return (busy_after - busy_before) / max(1, total_after - total_before)


def wait_until_idle(timeout: float, threshold: float = 0.1, quiet_seconds: int = 5) -> float:
    """Wait up to `timeout` s for `quiet_seconds` in a row under `threshold` busy; last share."""
    deadline = time.monotonic() + timeout
    told = -60.0
    quiet = 0
    share = busy_share()
    while time.monotonic() < deadline:
        quiet = quiet + 1 if share < threshold else 0
        if quiet >= quiet_seconds:
            break
        if quiet == 0 and time.monotonic() - told >= 60:
            print(f"  CPUs {share:.0%} busy: waiting for them to be idle…", file=sys.stderr)
            told = time.monotonic()
        share = busy_share()
    return share


def _own_jiffies(root: int) -> int:
    """CPU jiffies of `root` and its live descendants, with the children each has reaped."""
    parents: dict[int, int] = {}
    jiffies: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue  # the process ended meanwhile
        parents[int(entry)] = int(fields[1])
        # utime + stime, and cutime + cstime: the time of children that ended and were waited for
        jiffies[int(entry)] = sum(int(value) for value in fields[11:15])
    total = 0
    for pid, used in jiffies.items():
        ancestor = pid
        while ancestor not in (root, 0, 1) and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor == root:
            total += used
    return total


class OthersMonitor:
    """Share of the machine's CPU used by processes outside this benchmark, between two marks."""

    def __init__(self) -> None:
        self._root = os.getpid()
        self._mark = self._sample()

    def _sample(self) -> tuple[int, int, int]:
        busy, total = _cpu_times()
        return busy, total, _own_jiffies(self._root)

    def mark(self) -> None:
        self._mark = self._sample()

    def others_share(self) -> float:
        """Busy share of all CPUs not spent by this process tree since the last mark (0..1)."""
        busy, total, own = self._sample()
        before_busy, before_total, before_own = self._mark
        others = (busy - before_busy) - (own - before_own)
        return max(0.0, others / max(1, total - before_total))
