"""Distributed GRPO through the real CLI on model=tiny (fp32), with ``launch.nproc_per_node=2``:

- ZeRO-2 and ZeRO-3 runs on 2 ranks give the same per-step metrics (losses, entropy, grad norm,
  rewards) and the same final weights as a plain 1-process run with the same global batch,
  within 1e-4 relative.
- A rank killed with SIGKILL makes ``rltrain`` exit within seconds with a message naming the rank
  and the signal, no worker is left behind, and rerunning the command (resume=auto) continues from
  the ZeRO-3 checkpoint to the same result as the uninterrupted run.

Rollouts are greedy here: sampled rollouts draw their random streams per rank (see
``loops.common.step_generator``), so only greedy rollouts are identical for 1 and 2 ranks. With
greedy groups every GRPO advantage is 0, so the gradient comes from the entropy bonus; the
policy-gradient path with non-zero advantages is covered on a fixed batch by
tests/engine/test_deepspeed.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]

ARGS = [
    "model=tiny", "model.dtype=fp32", "data.n_train=64", "data.n_test=8", "eval.size=8", "eval.max_new_tokens=4",
    "eval.at_start=false", "reward=python", "reward.fn=tests.toy_rewards:sevens", "rollout.max_new_tokens=8",
    "rollout.temperature=0", "algo.entropy_coef=0.1", "train.steps=3", "train.prompts_per_step=4",
    "train.samples_per_prompt=4", "train.minibatches_per_step=2", "train.micro_batch_size=2", "train.lr=1e-3",
    "checkpoint.every=1", "checkpoint.keep=3", "launch.threads_per_rank=1", "log.console=false",
]
COMPARED = ("actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/lr", "reward/mean",
            "response/length_mean")


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "rltrain.cli", *ARGS, *extra, f"hydra.run.dir={run_dir}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(run_dir: Path, *extra: str) -> Path:
    p = start(run_dir, *extra)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-6000:]
    return run_dir


def metrics(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "event" not in r}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / "step_000003" / "policy" / "model.safetensors")


def assert_same(got: Path, want: Path, rel: float = 1e-4) -> None:
    a, b = metrics(got), metrics(want)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in b:
        for k in COMPARED:
            assert a[step][k] == pytest.approx(b[step][k], rel=rel, abs=1e-7), (step, k)
    wa, wb = final_weights(got), final_weights(want)
    assert wa.keys() == wb.keys()
    for name in wb:
        diff = (wa[name] - wb[name]).abs().max().item()
        assert diff <= rel * wb[name].abs().max().item(), (name, diff)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return run(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def zero3(tmp_path_factory):
    return run(tmp_path_factory.mktemp("zero3"), "deepspeed=zero3", "launch.nproc_per_node=2")


def test_plain_run_learns_something(plain):
    m = metrics(plain)
    assert m[1]["actor/grad_norm"] > 0 and m[1]["actor/entropy"] != m[3]["actor/entropy"]


def test_zero2_two_ranks_match_one_process(tmp_path, plain):
    assert_same(run(tmp_path, "deepspeed=zero2", "launch.nproc_per_node=2"), plain)


def test_zero3_two_ranks_match_one_process(zero3, plain):
    assert_same(zero3, plain)


def test_killed_rank_stops_job_then_resume_matches(tmp_path, zero3):
    p = start(tmp_path, "deepspeed=zero3", "launch.nproc_per_node=2")
    ckpt = tmp_path / "checkpoints" / "step_000002" / "COMPLETE"
    deadline = time.time() + 600
    while not ckpt.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert ckpt.exists(), p.communicate()[0][-6000:]
    workers = psutil.Process(p.pid).children()
    assert len(workers) == 2
    victim = next(w for w in workers if "RLTRAIN_RANK=1" in "\n".join(f"{k}={v}" for k, v in w.environ().items()))
    victim.send_signal(signal.SIGKILL)
    t0 = time.time()
    out, _ = p.communicate(timeout=120)
    assert time.time() - t0 < 60, "the job took too long to notice the dead rank"
    assert p.returncode != 0
    assert "worker rank 1 of 2 was killed by SIGKILL" in out, out[-4000:]
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, alive

    run(tmp_path, "deepspeed=zero3", "launch.nproc_per_node=2")  # the same command: resume=auto
    assert_same(tmp_path, zero3, rel=1e-6)
