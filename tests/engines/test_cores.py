"""The cores engines use: affinity capped by a cgroup CPU quota, read from cgroup v1 and v2
trees laid out as Linux and container runtimes mount them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ember.engines import cores
from ember.engines.cores import available_cores, cgroup_cpu_limit


def membership(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "proc-self-cgroup"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_cgroup_v2_quota_of_the_process_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "system.slice" / "ember.service" / "cpu.max", "150000 100000")
    write(root / "system.slice" / "cpu.max", "max 100000")
    found = cgroup_cpu_limit(root, membership(tmp_path, "0::/system.slice/ember.service"))
    assert found == 1.5


def test_cgroup_v2_a_parent_tighter_than_the_cgroup_wins(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "user.slice" / "a" / "cpu.max", "max 100000")
    write(root / "user.slice" / "cpu.max", "50000 100000")
    assert cgroup_cpu_limit(root, membership(tmp_path, "0::/user.slice/a")) == 0.5


def test_docker_cpus_on_cgroup_v2_with_a_namespaced_root(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"  # docker --cpus=2: the container's cgroup is the mount itself
    write(root / "cpu.max", "200000 100000")
    assert cgroup_cpu_limit(root, membership(tmp_path, "0::/")) == 2.0


def test_cgroup_v1_quota_in_a_container_whose_host_path_is_not_mounted(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "100000")
    write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    lines = ("12:memory:/docker/abc", "4:cpu,cpuacct:/docker/abc", "0::/")
    assert cgroup_cpu_limit(root, membership(tmp_path, *lines)) == 1.0


def test_no_quota_set_or_nothing_readable_is_no_limit(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "cpu" / "cpu.cfs_quota_us", "-1")
    write(root / "cpu" / "cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(root, membership(tmp_path, "3:cpu:/", "0::/")) is None
    assert cgroup_cpu_limit(root, membership(tmp_path, "garbage", "0::/")) is None
    assert cgroup_cpu_limit(root, tmp_path / "missing") is None
    write(root / "cpu.max", "not numbers")
    assert cgroup_cpu_limit(root, membership(tmp_path, "0::/")) is None


@pytest.mark.parametrize(("quota", "expected"), [(None, None), (0.5, 1), (1.5, 1), (64.0, None)])
def test_available_cores_is_the_affinity_capped_by_the_quota_rounded_down(
    monkeypatch: pytest.MonkeyPatch, quota: float | None, expected: int | None
) -> None:
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr(cores, "cgroup_cpu_limit", lambda: quota)  # the quota injected
    assert available_cores() == (affinity if expected is None else min(expected, affinity))


def test_this_machine_reads_without_error() -> None:
    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))
