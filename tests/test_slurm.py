"""rltrain under a real single-node Slurm (slurmctld + slurmd + munged on this host).

When run as root on a machine with apt (or with Slurm already installed), the module fixture
starts Slurm with scripts/slurm/local_slurm.sh (installing slurm-wlm and munge if needed), and
stops the daemons it started afterwards. Then:

- ``rltrain -m seed=0,1 hydra/launcher=submitit_slurm ...`` runs both jobs as Slurm jobs and each
  writes its metrics;
- scripts/slurm/multinode.sbatch runs a 2-task DeepSpeed ZeRO-2 job with srun (one rank per task,
  the rendezvous from the Slurm environment) to the end, with one ZeRO shard per rank.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm" / "local_slurm.sh"
TINY = ["model=tiny", "data.n_train=64", "data.n_test=8", "eval.size=8", "eval.max_new_tokens=4",
        "reward=python", "reward.fn=tests.toy_rewards:sevens", "rollout.max_new_tokens=8",
        "train.prompts_per_step=2", "train.samples_per_prompt=4", "train.micro_batch_size=4", "train.steps=2",
        "launch.threads_per_rank=1", "log.console=false"]


def _live_daemons() -> set[str]:
    """Slurm daemons alive on this host (zombies excluded: PID 1 of a container may not reap)."""
    import psutil

    return {p.info["name"] for p in psutil.process_iter(["name", "status"])
            if p.info["name"] in ("slurmctld", "slurmd") and p.info["status"] != psutil.STATUS_ZOMBIE}


def _slurm_up() -> bool:
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ping.returncode == 0 and "UP" in ping.stdout and "slurmd" in _live_daemons()


@pytest.fixture(scope="module")
def slurm():
    if sys.platform != "linux":
        pytest.skip("the local Slurm test needs Linux (runs on Linux as root with apt-get, as in CI)")
    if os.geteuid() != 0:
        pytest.skip("the local Slurm test needs root (it installs slurm-wlm/munge and starts slurmctld/slurmd)")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("Slurm is not installed and apt-get is not available to install it")
    already = _slurm_up()
    if not already:
        p = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            if not shutil.which("slurmctld"):  # installing failed (no package mirror reachable?)
                pytest.skip(f"could not install Slurm with apt-get: {p.stderr.strip()[-500:]}")
            pytest.fail(f"Slurm is installed but did not start:\n{p.stdout}\n{p.stderr}")
    yield
    if not already:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120)
        assert not _live_daemons(), f"the Slurm daemons this test started are still running: {_live_daemons()}"


def _steps(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "event" not in r]


def test_submitit_sweep(slurm, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "rltrain.cli", "-m", "seed=0,1", "hydra/launcher=submitit_slurm",
                        "hydra.launcher.timeout_min=10", *TINY, f"hydra.sweep.dir={tmp_path}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-6000:]
    for job in ("0", "1"):
        assert _steps(tmp_path / job) == [1, 2], job
        assert (tmp_path / job / "checkpoints" / "step_000002" / "COMPLETE").exists()
    seeds = {(tmp_path / j / "config.yaml").read_text().split("\nseed: ")[1].split()[0] for j in ("0", "1")}
    assert seeds == {"0", "1"}
    logs = list((tmp_path / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2, logs  # two Slurm jobs ran


def test_srun_two_task_deepspeed_job(slurm, tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", RUN_DIR=str(run_dir), DEEPSPEED="zero2",
               RLTRAIN=f"{sys.executable} -m rltrain.cli")
    p = subprocess.run(["sbatch", "--wait", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                        "--gpus-per-task=0", "--time=10", f"--output={tmp_path}/slurm-%j.out",
                        str(REPO / "scripts" / "slurm" / "multinode.sbatch"), *TINY[:-2], "log.console=false"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = "\n".join(f.read_text() for f in tmp_path.glob("slurm-*.out"))
    assert p.returncode == 0, (p.stdout + p.stderr + log)[-6000:]
    assert _steps(run_dir) == [1, 2], log[-4000:]
    shards = list((run_dir / "checkpoints" / "step_000002" / "actor" / "zero").glob("*optim_states.pt"))
    assert len(shards) == 2, shards  # two ranks, one ZeRO-2 partition each


def test_submitit_launcher_composes():
    """``hydra/launcher=submitit_slurm`` is available (hydra-submitit-launcher) with one task per job
    by default; runs without a Slurm too."""
    p = subprocess.run([sys.executable, "-m", "rltrain.cli", "--cfg", "hydra", "hydra/launcher=submitit_slurm",
                        "model=tiny"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "submitit_launcher.SlurmLauncher" in p.stdout and "tasks_per_node: 1" in p.stdout
