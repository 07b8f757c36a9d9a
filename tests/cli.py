"""The one way tests run rltrain end to end.

- ``run_cli`` / ``start_cli``: the real command (``python -m rltrain.cli``) in a subprocess, for
  what only the command shows: exit codes, one-line errors, signals, resume after SIGKILL, workers.
- ``run_inprocess``: the same path inside the test process (compose → validate → preflight →
  ``launch.launch``), for tests about what a run learns or logs. It skips the ~7 s of importing
  torch and transformers that every subprocess pays, and restores the process's thread settings.
- ``metrics``: a run's per-step rows of metrics.jsonl; ``events``: its evaluation events.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# model=tiny with a toy reward: a few hundred ms per step, the common base of the e2e tests.
TINY = [
    "model=tiny", "data.n_train=64", "data.n_test=8", "eval.size=8", "eval.max_new_tokens=8",
    "reward=python", "reward.fn=tests.toy_rewards:sevens",
    "rollout.max_new_tokens=8", "train.prompts_per_step=4", "train.samples_per_prompt=8",
    "train.micro_batch_size=16", "launch.threads_per_rank=1", "log.console=false",
]


def _env(**env) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", **env)


def start_cli(args, run_dir, **env) -> subprocess.Popen:
    """``rltrain <args> hydra.run.dir=<run_dir>`` in a subprocess, stdout and stderr merged."""
    return subprocess.Popen([sys.executable, "-m", "rltrain.cli", *args, f"hydra.run.dir={run_dir}"], cwd=REPO,
                            env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_cli(args, run_dir, *, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    """``rltrain`` to completion; stdout and stderr apart (for the one-line error checks)."""
    return subprocess.run([sys.executable, "-m", "rltrain.cli", *args, f"hydra.run.dir={run_dir}"], cwd=REPO,
                          env=_env(**env), capture_output=True, text=True, timeout=timeout)


def run_ok(args, run_dir, **env) -> str:
    """``run_cli`` that must succeed; returns stdout + stderr."""
    r = run_cli(args, run_dir, **env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    return r.stdout + r.stderr


def run_inprocess(args, run_dir) -> dict:
    """The command's path in this process; returns the loop's result (eval before / after)."""
    from rltrain import launch
    from rltrain.cli import compose_or_explain, quiet_accelerator_detection, run_preflight, to_run_config
    from rltrain.config import register_configs, validate

    register_configs()
    cfg = to_run_config(compose_or_explain(list(args)))
    cfg.run_dir = str(run_dir)
    validate(cfg, world_size=launch.planned_world_size(cfg))
    run_preflight(cfg)
    quiet_accelerator_detection()
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    try:
        return launch.launch(cfg)
    finally:
        torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp


def _rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def metrics(run_dir) -> list[dict]:
    """Per-step rows, in order."""
    return [r for r in _rows(run_dir) if "event" not in r]


def events(run_dir) -> list[dict]:
    """Evaluation (and other) events, in order."""
    return [r for r in _rows(run_dir) if "event" in r]


def mean(rows: list[dict], key: str, sl: slice) -> float:
    """Mean of ``key`` over ``rows[sl]``."""
    xs = [r[key] for r in rows[sl]]
    return sum(xs) / len(xs)
