"""Launch modes: one process, N local worker processes, or one task of a Slurm job.

The ``rltrain`` process composes the config once and writes the resolved ``config.yaml`` into
the run directory. Workers read that file (``python -m rltrain.launch RUN_DIR``) and never re-run
Hydra. Under Slurm each task takes its rank and world size from the Slurm environment.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rltrain import threads

threads.set_wait_policy()  # before torch loads (rltrain.config imports it): OpenMP reads it once

from omegaconf import OmegaConf  # noqa: E402

from rltrain.config import LOOPS, RunConfig, option_schema  # noqa: E402



def slurm_world() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) when running as one task of a multi-task Slurm step."""
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return (int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]),
                int(os.environ.get("SLURM_LOCALID", "0")))
    return None


def planned_world_size(cfg: RunConfig) -> int:
    sw = slurm_world()
    return sw[1] if sw else cfg.launch.nproc_per_node


def save_config(cfg: RunConfig, run_dir: Path, header: str = "") -> None:
    """The resolved config as ``run_dir/config.yaml``; ``header``: comment lines on top (why
    ``model.dtype=auto`` resolved as it did)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    (run_dir / "config.yaml").write_text(comments + OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def load_config(run_dir: str | Path) -> RunConfig:
    """Read a run directory's config.yaml back into typed dataclasses."""
    raw = OmegaConf.load(Path(run_dir) / "config.yaml")
    base = OmegaConf.structured(RunConfig)
    for group in ("algo", "reward", "data", "model", "deepspeed", "token_selection", "policy_loss"):
        schema = option_schema(group, raw[group]["name"])
        base[group] = OmegaConf.merge(OmegaConf.structured(schema), raw[group])
        del raw[group]
    return OmegaConf.to_object(OmegaConf.merge(base, raw))


def _import(path: str):
    import importlib

    mod, fn = path.split(":")
    return getattr(importlib.import_module(mod), fn)


def local_world_size(world_size: int) -> int:
    """Ranks on this machine: the Slurm tasks of this node, else every rank (local workers)."""
    if slurm_world() is not None:
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE", "")
        digits = per_node.split("(")[0].split(",")[0]
        return int(digits) if digits.isdigit() else world_size
    return world_size


def cpu_budget(cfg: RunConfig, local_world: int) -> threads.CpuBudget:
    """OMP/torch threads of one rank (rltrain/threads.py): launch.threads_per_rank, else Slurm's CPUs
    per task, else this process's usable cores (affinity, cgroup quota) shared by the ranks on this
    machine (oversubscription is slow)."""
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    from_slurm = slurm_world() is not None and slurm_cpus.isdigit()
    return threads.cpu_budget(local_world, configured=cfg.launch.threads_per_rank,
                              slurm_cpus=int(slurm_cpus) if from_slurm else None)


def set_threads(cfg: RunConfig, world_size: int) -> threads.CpuBudget:
    """Set this rank's threads for the run."""
    import torch

    budget = cpu_budget(cfg, local_world_size(world_size))
    os.environ["OMP_NUM_THREADS"] = str(budget.threads)
    torch.set_num_threads(budget.threads)
    return budget


def warn_if_loaded(cfg: RunConfig, local_world: int) -> None:
    """One line when the machine is already busy with other work as the run starts."""
    cores = cpu_budget(cfg, local_world).threads * local_world
    load1 = os.getloadavg()[0]
    text = threads.load_warning(load1, threads.others_busy_now() if load1 > cores else 0.0, cores)
    if text:
        print(f"rltrain: warning: {text}", file=sys.stderr, flush=True)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    Every forward allocates and frees tensors of hundreds of MB (logits ``[B, T, V]``, activations);
    by default glibc serves each with a fresh ``mmap`` and unmaps it on free, so the next step
    faults the same pages in again, zero-filled by the kernel (a 16-row SmolLM2 micro-batch on a
    2-core CPU: 420–690 k minor faults and 3–6 s of system time per forward + backward; with this,
    80–300 k and then none, and 5–10% less wall time).
    With mmap off and trimming off, freed blocks stay in the heap and are reused; the process keeps
    its peak memory until it exits. Returns whether it applied (glibc only; a no-op elsewhere).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: the mallopt parameters below are glibc's
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1
    ok &= libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2 ** 31 - 1)) == 1
    ok &= libc.mallopt(M_TOP_PAD, ctypes.c_int(256 << 20)) == 1
    return bool(ok)


def run_worker(cfg: RunConfig, rank: int = 0, world_size: int = 1, *, master_addr: str = "127.0.0.1",
               master_port: int = 29500):
    """Run the algorithm's loop in this process as ``rank`` of ``world_size``."""
    from rltrain.engine.dist import init_dist

    set_threads(cfg, world_size)
    if cfg.launch.keep_freed_memory:
        keep_freed_memory()
    dist = init_dist(rank, world_size, master_addr=master_addr, master_port=master_port,
                     timeout_s=cfg.launch.timeout_s)
    # Rank 0's config is the run's config (Slurm tasks each composed their own; run_dir may differ).
    cfg = dist.broadcast_object(cfg)
    result = _import(LOOPS[cfg.algo.name])(cfg, dist)
    dist.close()
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In a worker, before exec: get SIGKILL when the launching process dies (Linux), so that an
    interrupted ``rltrain`` never leaves workers blocked in a collective."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _spawn_local(cfg: RunConfig, run_dir: Path, n: int) -> dict:
    """N worker processes on this machine; if one fails, stop the others and raise.

    A rank that dies makes the others fail in their next collective (gloo/nccl see the closed
    connection) or, if one hangs, after ``launch.timeout_s``; the launcher notices within a poll
    interval, terminates every remaining worker (SIGTERM, then SIGKILL) and names the rank that
    failed first.
    """
    port = _free_port()
    n_threads = cpu_budget(cfg, n).threads
    procs = []
    for rank in range(n):
        env = dict(os.environ, RLTRAIN_RANK=str(rank), RLTRAIN_WORLD=str(n), LOCAL_RANK=str(rank),
                   RLTRAIN_MASTER_PORT=str(port), OMP_NUM_THREADS=str(n_threads))
        procs.append(subprocess.Popen([sys.executable, "-m", "rltrain.launch", str(run_dir)], env=env,
                                      preexec_fn=_die_with_parent if sys.platform == "linux" else None))
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                # Killed-by-signal first: a rank that was killed makes the others error out at once.
                failed.sort(key=lambda rc: (rc[1] >= 0, rc[0]))
                rank, code = failed[0]
                also = "; ".join(f"rank {r} {_exit_text(c)}" for r, c in failed[1:])
                raise RuntimeError(
                    f"worker rank {rank} of {n} {_exit_text(code)}" + (f" ({also})" if also else "")
                    + f"; stopped the other workers. The workers' logs are above; rerun the same command "
                    f"(resume=auto) to continue from the last checkpoint in {run_dir}/checkpoints")
            if all(c == 0 for c in codes):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return {"run_dir": str(run_dir)}


def _slurm_master() -> tuple[str, int]:
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or "127.0.0.1"
    try:
        host = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                              check=True).stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        host = nodes.split(",")[0]
    port = 20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000
    return host, port


def launch(cfg: RunConfig) -> dict:
    """Entry from the CLI (once per job of a sweep)."""
    from rltrain.engine.model import resolve_dtype_with_reason

    run_dir = Path(cfg.run_dir)
    requested = cfg.model.dtype
    cfg.model.dtype, why = resolve_dtype_with_reason(requested)  # recorded resolved in config.yaml, and why
    header = f"model.dtype={requested} -> {cfg.model.dtype}: {why}" if requested == "auto" else ""
    sw = slurm_world()
    if sw is not None:
        rank, world, local_rank = sw
        os.environ["LOCAL_RANK"] = str(local_rank)
        if rank == 0:
            save_config(cfg, run_dir, header)
            warn_if_loaded(cfg, local_world_size(world))
        addr, port = _slurm_master()
        return run_worker(cfg, rank, world, master_addr=addr, master_port=port) or {}
    save_config(cfg, run_dir, header)
    warn_if_loaded(cfg, cfg.launch.nproc_per_node)
    if cfg.launch.nproc_per_node == 1:
        return run_worker(cfg) or {}
    return _spawn_local(cfg, run_dir, cfg.launch.nproc_per_node)


def worker_main() -> None:
    parser = argparse.ArgumentParser(description="one rltrain worker (started by `rltrain`)")
    parser.add_argument("run_dir")
    args = parser.parse_args()
    cfg = load_config(args.run_dir)
    run_worker(cfg, int(os.environ["RLTRAIN_RANK"]), int(os.environ["RLTRAIN_WORLD"]),
               master_port=int(os.environ["RLTRAIN_MASTER_PORT"]))


if __name__ == "__main__":
    worker_main()
