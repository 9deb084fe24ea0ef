"""How many CPUs this process may really use, and the runtime defaults that follow from it.

``os.cpu_count()`` is the host's core count: in a container or a Kubernetes pod limited to two
CPUs on a 64-core node it says 64, and a server sized from it runs 64 threads on two cores' worth
of time. The budget that counts is the smallest of:

1. the cgroup CPU quota (v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``), which
   Docker's ``--cpus`` and a pod's ``resources.limits.cpu`` set, rounded up to whole CPUs;
2. the CPUs the process may be scheduled on (``os.sched_getaffinity``: ``taskset``, cpusets);
3. ``os.cpu_count()`` where neither is available.

From it :func:`plan_cpus` picks the serving defaults: one model instance per CPU, each with one
runtime thread. The int8 Lite0 model has many small layers whose threads wait on each other, so
independent single-threaded batches side by side served 13-36% more images per second than one
batch spread over all cores (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: Where the cgroup file systems are mounted (a parameter so tests can point at fake files).
CGROUP_ROOT = Path("/sys/fs/cgroup")

#: Most instances chosen by default: past this, more concurrent batches only add memory.
MAX_DEFAULT_INSTANCES = 8


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs this process may use and where that number came from.

    Attributes:
        cpus: Whole CPUs available (at least 1).
        source: ``"cgroup v2 quota"``, ``"cgroup v1 quota"``, ``"affinity"`` or ``"cpu_count"``.
    """

    cpus: int
    source: str


@dataclass(frozen=True)
class CpuPlan:
    """Concurrent model instances and runtime threads for each, for a :class:`CpuBudget`."""

    instances: int
    threads: int
    budget: CpuBudget


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_cpus(quota_us: str, period_us: str) -> int | None:
    """Whole CPUs for a CFS quota and period in microseconds; None when unlimited or unreadable."""
    try:
        quota, period = int(quota_us), int(period_us)
    except ValueError:
        return None  # "max" (v2) means no limit
    if quota <= 0 or period <= 0:  # -1 (v1) means no limit
        return None
    return max(1, math.ceil(quota / period))


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> tuple[int, str] | None:
    """The cgroup CPU quota in whole CPUs and its cgroup version, or None when unlimited.

    Reads the v2 ``cpu.max`` first, then v1's ``cpu/cpu.cfs_quota_us`` and ``cpu.cfs_period_us``
    (also found mounted as ``cpu,cpuacct``). Inside a container the process's own cgroup is
    mounted at ``root``.
    """
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        cpus = _quota_cpus(quota, period or "100000")
        return None if cpus is None else (cpus, "cgroup v2 quota")
    for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota_text = _read(root / folder / "cpu.cfs_quota_us")
        period_text = _read(root / folder / "cpu.cfs_period_us")
        if quota_text is not None and period_text is not None:
            cpus = _quota_cpus(quota_text, period_text)
            return None if cpus is None else (cpus, "cgroup v1 quota")
    return None


def available_cpus(root: Path = CGROUP_ROOT) -> CpuBudget:
    """The CPUs this process may use: cgroup quota, then affinity, then the host's count."""
    affinity = getattr(os, "sched_getaffinity", None)
    scheduled = len(affinity(0)) if affinity is not None else None
    quota = cgroup_cpu_quota(root)
    if quota is not None and (scheduled is None or quota[0] <= scheduled):
        return CpuBudget(quota[0], quota[1])
    if scheduled is not None:
        return CpuBudget(max(1, scheduled), "affinity")
    return CpuBudget(max(1, os.cpu_count() or 1), "cpu_count")


def plan_cpus(
    instances: int | None = None,
    threads: int | None = None,
    *,
    budget: CpuBudget | None = None,
) -> CpuPlan:
    """Fill in the instances and threads not given, from the CPU budget, and log the choice.

    Args:
        instances: Concurrent batches (model instances); None: one per CPU, at most
            :data:`MAX_DEFAULT_INSTANCES`.
        threads: Runtime intra-op threads per instance; None: an equal share of the CPUs.
        budget: The CPUs to plan for; None reads :func:`available_cpus`.
    """
    budget = budget or available_cpus()
    chosen_instances = instances or min(budget.cpus, MAX_DEFAULT_INSTANCES)
    chosen_threads = threads or max(1, budget.cpus // chosen_instances)
    plan = CpuPlan(chosen_instances, chosen_threads, budget)
    logger.info(
        "%d CPUs available (%s): %d instance(s) x %d runtime thread(s)",
        budget.cpus,
        budget.source,
        plan.instances,
        plan.threads,
        extra={"cpus": budget.cpus, "instances": plan.instances, "threads": plan.threads},
    )
    return plan


def lower_thread_priority(increment: int) -> int | None:
    """Lower the calling thread's CPU priority by ``increment`` nice levels (at most to 19).

    On Linux a thread's nice value is its own (``setpriority`` on its thread id), so a server can
    keep a few threads for work it must do but should never let delay the rest: when the CPUs
    are busy the scheduler gives those threads what the others leave. The change is one-way for
    an unprivileged process, so such threads must be kept for that work alone.

    Returns:
        The thread's nice value now, or None where threads have no priority of their own (not
        Linux) or the system refused the change.
    """
    if not sys.platform.startswith("linux"):
        return None
    thread = threading.get_native_id()
    try:
        nice = min(19, os.getpriority(os.PRIO_PROCESS, thread) + increment)
        os.setpriority(os.PRIO_PROCESS, thread, nice)
    except OSError as exc:
        logger.warning("could not lower the priority of thread %d: %s", thread, exc)
        return None
    return nice


def low_priority_executor(increment: int, name: str) -> ThreadPoolExecutor:
    """A one-thread pool whose thread runs ``increment`` nice levels below the caller's priority.

    The thread starts at once, lowers its own priority (:func:`lower_thread_priority`) and logs
    its thread id and nice value, so the priority is in place before any work arrives.
    """

    def start() -> None:
        nice = lower_thread_priority(increment)
        logger.info(
            "%s thread %d runs at nice %s",
            name,
            threading.get_native_id(),
            nice,
            extra={"thread_id": threading.get_native_id(), "nice": nice},
        )

    pool = ThreadPoolExecutor(1, name, initializer=start)
    pool.submit(int).result()  # start the thread now
    return pool
