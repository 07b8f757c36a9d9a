"""``reward.fn=module:attr`` with the module in the directory where ``rltrain`` was started, through the
installed console script (``python -m`` would put the working directory on sys.path by itself, the
console script does not): one process, two local worker processes, two Slurm tasks (each task runs
the command, as ``srun rltrain ...`` does; the Slurm environment is set by hand, no Slurm needed).
A module that really is missing still stops the run with one line naming ``reward.fn``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import metrics

RLTRAIN = str(Path(sys.executable).parent / "rltrain")  # the console script `pip install` made
MY_REWARDS = 'def score(samples, completions):\n    return [float("7" in c) for c in completions]\n'
ARGS = ["model=tiny", "data.n_train=64", "data.n_test=8", "eval.size=8", "eval.max_new_tokens=8",
        "eval.at_start=false", "reward=python", "rollout.max_new_tokens=8", "train.prompts_per_step=4",
        "train.samples_per_prompt=8", "train.micro_batch_size=16", "train.steps=1", "launch.threads_per_rank=1",
        "log.console=false"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("SLURM_")}
    return dict(env, OMP_NUM_THREADS="1", **extra)


def _start(cwd: Path, run_dir: Path, *args: str, **env) -> subprocess.Popen:
    return subprocess.Popen([RLTRAIN, *ARGS, *args, f"hydra.run.dir={run_dir}"], cwd=cwd, env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(p: subprocess.Popen) -> str:
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-6000:]
    return out


@pytest.fixture
def user_dir(tmp_path) -> Path:
    (tmp_path / "my_rewards.py").write_text(MY_REWARDS)
    return tmp_path


@pytest.mark.parametrize("ranks", [1, 2])
def test_reward_module_in_the_working_directory_local_ranks(user_dir, ranks):
    """Before issue 31: 'cannot import module my_rewards … is its directory on PYTHONPATH?'."""
    run = user_dir / "run"
    _finish(_start(user_dir, run, "reward.fn=my_rewards:score", f"launch.nproc_per_node={ranks}"))
    assert [r["step"] for r in metrics(run)] == [1]


def test_reward_module_in_the_working_directory_slurm_tasks(user_dir):
    run = user_dir / "run"
    slurm = dict(SLURM_NTASKS="2", SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="127.0.0.1", SLURM_NTASKS_PER_NODE="2")
    tasks = [_start(user_dir, run, "reward.fn=my_rewards:score", SLURM_PROCID=str(r), SLURM_LOCALID=str(r), **slurm)
             for r in range(2)]
    for p in tasks:
        _finish(p)
    assert [r["step"] for r in metrics(run)] == [1]


def test_a_missing_module_is_still_one_line_naming_the_key(user_dir):
    r = subprocess.run([RLTRAIN, *ARGS, "reward.fn=not_my_rewards:score", f"hydra.run.dir={user_dir / 'run'}"],
                       cwd=user_dir, env=_env(), capture_output=True, text=True, timeout=600)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("rltrain: reward error: reward.fn='not_my_rewards:score': cannot import module "
                               "'not_my_rewards'"), lines[0]
    assert str(user_dir) in lines[0]  # says where it looked
    assert not (user_dir / "run").exists()
