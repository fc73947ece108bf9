"""CPU thread defaults, set before torch is imported (launch.py and the scripts call :func:`set_cpu_thread_defaults`).

PyTorch's CPU build runs its parallel ops on GNU OpenMP (libgomp). Two defaults waste CPU when the cores are
shared (other jobs, a container's CPU quota):

- libgomp's threads *spin* (busy-wait) at the end of every parallel region before they sleep. When another process
  holds a core, the waiting thread burns its time slice spinning: the smoke demo took 123 s of CPU instead of 38 s
  on 2 shared cores (docs/PERFORMANCE.md, "CPU threads"). ``OMP_WAIT_POLICY=PASSIVE`` makes them sleep at once.
- OpenMP sizes its pool from the CPUs the process may run on, not from a container's CPU quota (cgroup
  ``cpu.max``): more threads than CPU time then only take turns. The default here is the smaller of the two.

Both are defaults: ``OMP_NUM_THREADS`` and ``OMP_WAIT_POLICY`` set in the environment win.
"""

from __future__ import annotations

import math
import os
from typing import Optional


def cgroup_cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> Optional[float]:
    """CPUs' worth of time the cgroup (v2) allows, e.g. 2.0 for ``200000 100000``; None without a quota."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return float(quota) / float(period)
    except (ValueError, ZeroDivisionError):
        return None


def available_cpus() -> int:
    """CPUs this process can use: its affinity mask, capped by the cgroup's CPU quota (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def set_cpu_thread_defaults() -> None:
    """Default ``OMP_WAIT_POLICY=PASSIVE`` and ``OMP_NUM_THREADS`` = :func:`available_cpus` (values already in the
    environment win). Only effective before torch is imported; child processes inherit them."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_NUM_THREADS", str(available_cpus()))
