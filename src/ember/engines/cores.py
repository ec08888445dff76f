"""How many cores the engines may use: the CPU affinity (cpusets, taskset), capped by a
cgroup CPU quota (`docker --cpus`, Kubernetes CPU limits), which affinity does not show: a
container limited to one CPU on a 16-core host ran 16 threads that the quota then throttled.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_MEMBERSHIP = Path("/proc/self/cgroup")
# cgroup v1 mounts the cpu controller under one of these names.
_V1_CPU_FOLDERS = ("cpu,cpuacct", "cpu", "cpuacct,cpu")


def available_cores() -> int:
    """Cores this process may run on: its affinity, capped by a CPU quota rounded down (a
    thread more than the quota allows stalls the others at every throttle), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, math.floor(quota))
    return max(1, cores)


def cgroup_cpu_limit(
    root: Path = CGROUP_ROOT, membership: Path = CGROUP_MEMBERSHIP
) -> float | None:
    """CPUs the tightest quota on this process's cgroup path allows (quota / period), or None
    when none is set or the files cannot be read (not Linux, no cgroup mounted)."""
    try:
        lines = membership.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2's single hierarchy
            limits += _limits_along(root, path, _v2_limit)
        elif "cpu" in controllers.split(","):
            mount = next((root / name for name in _V1_CPU_FOLDERS if (root / name).is_dir()), None)
            if mount is not None:
                limits += _limits_along(mount, path, _v1_limit)
    return min(limits, default=None)


def _limits_along(mount: Path, path: str, limit_of: Callable[[Path], float | None]) -> list[float]:
    """The limits set on the cgroup at `path` under `mount` and on its parents. Inside a
    container the path may name the host's hierarchy, which is not mounted: the container's
    own cgroup is then the mount itself."""
    folder = mount / path.strip("/")
    if not folder.is_dir():
        folder = mount
    found = []
    while True:
        limit = limit_of(folder)
        if limit is not None:
            found.append(limit)
        if folder == mount or mount not in folder.parents:
            return found
        folder = folder.parent


def _v2_limit(folder: Path) -> float | None:
    """cgroup v2 `cpu.max`: "QUOTA PERIOD", or "max PERIOD" for none."""
    try:
        quota, period = (folder / "cpu.max").read_text(encoding="utf-8").split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_limit(folder: Path) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` over `cpu.cfs_period_us`; a quota of -1 is none."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text(encoding="utf-8"))
        period = int((folder / "cpu.cfs_period_us").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period
