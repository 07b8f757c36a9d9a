"""How many threads a rank computes with, and how they behave when the CPU is shared.

A run on a 2-core machine used to pin ``OMP_NUM_THREADS`` to every core it saw. When another
process took one of those cores, each parallel region waited for the thread that had been
descheduled while its partner spun, and steps became several times slower instead of about 2x.
What this module does about it (measurements: docs/results.md, "Sharing the CPU"):

- **The cores a rank may use** are the smallest of its CPU affinity (``sched_getaffinity``), its
  cgroup's CPU quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` in v1; a container's
  ``--cpus``) and Slurm's ``SLURM_CPUS_PER_TASK``, shared by the ranks on the machine.
- **Threads that sleep when they wait**: ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it
  (``rltrain.cli`` and ``rltrain.launch`` set it before torch is imported; OpenMP reads it once, at
  load). Beside one busy process on 2 cores this brought a SmolLM2-sized forward + backward from
  2.1x to 1.5x its uncontended time and KV-cached decoding from 2.6x to 1.3x, as fast as computing
  with one thread; so the thread count stays fixed for the run (which keeps a seed's arithmetic
  the same on a busy machine).
- **A warning at start** (``load_warning``), one line, when the load average already exceeds the
  run's cores and other processes are busy on them right now.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

WAIT_POLICY = "PASSIVE"


def set_wait_policy(environ=os.environ) -> str:
    """``OMP_WAIT_POLICY=PASSIVE`` unless already set; returns the policy in effect. Must run before
    torch (its OpenMP runtime) is loaded to have any effect."""
    return environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup"),
                     proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (``cpu.max`` ``"200000 100000"`` -> 2.0), or
    None when there is none (``max``), or when it cannot be read."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":  # cgroup v2: walk up from the process's cgroup; the tightest limit wins
            quota = None
            d = root / rel
            while True:
                q = _read_v2(d / "cpu.max")
                if q is not None:
                    quota = q if quota is None else min(quota, q)
                if d == root or root not in d.parents:
                    break
                d = d.parent
            return quota
        if "cpu" in controllers.split(","):
            for base in (root / "cpu,cpuacct", root / "cpu"):
                q = _read_v1(base / rel)
                if q is not None:
                    return q
    return None


def _read_v2(path: Path) -> float | None:
    try:
        quota, period = path.read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _read_v1(d: Path) -> float | None:
    try:
        quota = int((d / "cpu.cfs_quota_us").read_text())
        period = int((d / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 else quota / period


@dataclass(frozen=True)
class CpuBudget:
    """The cores a rank may compute with and what limited them."""

    threads: int
    why: str


def cpu_budget(local_world: int = 1, *, configured: int = 0, affinity: int | None = None,
               quota: float | None = None, slurm_cpus: int | None = None) -> CpuBudget:
    """Threads per rank: ``launch.threads_per_rank`` when set, else Slurm's CPUs per task, else the
    machine's usable cores (affinity and cgroup quota, whichever is smaller) shared by the
    ``local_world`` ranks on it; at least 1. Arguments left None are read from this process."""
    if configured:
        return CpuBudget(configured, "launch.threads_per_rank")
    if slurm_cpus:
        return CpuBudget(slurm_cpus, "SLURM_CPUS_PER_TASK")
    affinity = len(os.sched_getaffinity(0)) if affinity is None else affinity
    quota = cgroup_cpu_quota() if quota is None else quota
    cores, why = affinity, f"{affinity} cores in this process's CPU affinity"
    if quota is not None and quota < affinity:
        # A quota of 1.5 cores with 2 threads throttles both every period: round down.
        cores, why = max(1, math.floor(quota)), f"the cgroup's CPU quota of {quota:g} cores"
    n = max(1, cores // max(1, local_world))
    if local_world > 1:
        why += f", shared by {local_world} ranks"
    return CpuBudget(n, why)


# Other processes keeping less than this many of the run's cores busy right now do not count: the
# load average lags by a minute (a job that has just ended still shows), a shell or logger is noise.
BUSY_NOW_CORES = 0.5


def load_warning(load1: float, busy_now: float, cores: int) -> str | None:
    """The start-of-run warning when the 1-minute load average already exceeds the cores the run will
    use and other processes are computing on them right now (``busy_now`` cores, from
    ``others_busy_now``), else None."""
    if load1 <= cores or busy_now < BUSY_NOW_CORES:
        return None
    return (f"the load average is {load1:.1f} on the {cores} core{'s' if cores != 1 else ''} this run uses and "
            f"other processes keep {busy_now:.1f} of them busy: steps will be slower (rltrain's threads sleep "
            f"while they wait instead of spinning; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})")


def busy_seconds(cpus: set[int], stat: Path = Path("/proc/stat")) -> float | None:
    """Seconds the cores in ``cpus`` have been busy since boot, summed (None where /proc is absent)."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            # user nice system idle iowait irq softirq steal: busy is all but idle and iowait
            fields = [int(x) for x in values[:8]]
            busy += sum(fields) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def others_busy_now(window_s: float = 0.3) -> float:
    """Cores of this process's affinity that other processes kept busy over the next ``window_s``
    (this process sleeps meanwhile); 0 where it cannot be read."""
    cpus = os.sched_getaffinity(0)
    before, own0 = busy_seconds(cpus), sum(os.times()[:2])
    time.sleep(window_s)
    after, own1 = busy_seconds(cpus), sum(os.times()[:2])
    if before is None or after is None:
        return 0.0
    return max(0.0, (after - before) - (own1 - own0)) / window_s
