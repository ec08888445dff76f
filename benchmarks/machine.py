"""How busy the machine is: benchmarks on a shared machine should start when it is idle."""

from __future__ import annotations

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
