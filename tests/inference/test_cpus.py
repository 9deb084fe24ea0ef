"""The CPU budget: cgroup v2 and v1 quotas (fake cgroup files), affinity, and the plan from it."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

import pytest

from imgclf.inference import cpus
from imgclf.inference.cpus import (
    CpuBudget,
    available_cpus,
    cgroup_cpu_quota,
    low_priority_executor,
    plan_cpus,
)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="ascii")
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "200000 100000"}, (2, "cgroup v2 quota")),
        ({"cpu.max": "150000 100000"}, (2, "cgroup v2 quota")),  # 1.5 CPUs: round up
        ({"cpu.max": "50000 100000"}, (1, "cgroup v2 quota")),  # never below one
        ({"cpu.max": "max 100000"}, None),  # no limit
        (
            {"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"},
            (3, "cgroup v1 quota"),
        ),
        (
            {"cpu,cpuacct/cpu.cfs_quota_us": "400000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            (4, "cgroup v1 quota"),
        ),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ({"cpu.max": "garbage"}, None),
        ({}, None),
    ],
)
def test_cgroup_quota(
    tmp_path: Path, files: dict[str, str], expected: tuple[int, str] | None
) -> None:
    assert cgroup_cpu_quota(_write(tmp_path, files)) == expected


def test_the_quota_wins_over_a_larger_affinity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(64)))
    root = _write(tmp_path, {"cpu.max": "200000 100000"})
    assert available_cpus(root) == CpuBudget(2, "cgroup v2 quota")


def test_affinity_wins_over_a_larger_quota_and_the_host_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.setattr(cpus.os, "cpu_count", lambda: 64)
    root = _write(tmp_path, {"cpu.max": "800000 100000"})
    assert available_cpus(root) == CpuBudget(3, "affinity")
    assert available_cpus(tmp_path / "none") == CpuBudget(3, "affinity")


def test_host_count_without_affinity_or_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(cpus.os, "sched_getaffinity")
    monkeypatch.setattr(cpus.os, "cpu_count", lambda: 6)
    assert available_cpus(tmp_path) == CpuBudget(6, "cpu_count")


@pytest.mark.parametrize(
    ("instances", "threads", "budget", "expected"),
    [
        (None, None, 2, (2, 1)),  # one single-threaded instance per CPU
        (None, None, 32, (8, 4)),  # at most 8 instances; the CPUs are shared among them
        (1, None, 4, (1, 4)),  # one instance gets every CPU
        (3, None, 2, (3, 1)),  # never fewer than one thread
        (2, 3, 8, (2, 3)),  # explicit values win
    ],
)
def test_plan(
    instances: int | None, threads: int | None, budget: int, expected: tuple[int, int]
) -> None:
    plan = plan_cpus(instances, threads, budget=CpuBudget(budget, "test"))
    assert (plan.instances, plan.threads) == expected


def test_the_plan_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="imgclf.inference.cpus"):
        plan_cpus(budget=CpuBudget(4, "cgroup v2 quota"))
    assert "4 CPUs available (cgroup v2 quota): 4 instance(s) x 1 runtime thread(s)" in caplog.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_low_priority_threads_are_lowered_alone(caplog: pytest.LogCaptureFixture) -> None:
    """The pool's threads run below the caller; the caller's own priority is untouched."""
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    caplog.set_level(logging.INFO, logger="imgclf.inference.cpus")
    with low_priority_executor(5, "test-low") as pool:
        theirs = pool.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        assert theirs.result(10) == min(19, mine + 5)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
    assert f"runs at nice {min(19, mine + 5)}" in caplog.text
