"""Checkpoints: the policy in HF format plus everything needed to resume, written atomically.

Layout of a run directory::

    RUN/checkpoints/step_000010/policy/       config.json, model.safetensors, tokenizer files
    RUN/checkpoints/step_000010/trainer.pt    actor/critic optimizer + scheduler + fp32 masters,
                                              step, RNG states, loop extras
    RUN/checkpoints/step_000010/actor/        DeepSpeed only: every rank's ZeRO shard (fp32 masters,
                                              optimizer, scheduler), written by DeepSpeed itself
    RUN/checkpoints/step_000010/critic/       PPO under DeepSpeed: the critic's ZeRO shards, likewise
    RUN/checkpoints/step_000010/reference/    PPO under ZeRO-3 with algo.ref_ema > 0: every rank's fp32
                                              partition of the moving reference (rank00000.pt, ...)
    RUN/checkpoints/step_000010/COMPLETE      written last

A checkpoint is written into ``step_N.tmp-<pid>`` and renamed into place only after every file is
flushed and ``COMPLETE`` exists, so a process killed mid-write leaves only a ``.tmp`` directory,
which ``latest_checkpoint`` never picks (and the next save removes).
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

COMPLETE = "COMPLETE"


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_hf(module: torch.nn.Module, tokenizer, out_dir: Path, state_dict: dict | None = None) -> None:
    """Save a standard HF directory (config.json, safetensors, tokenizer) in fp32."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else {k: v.float() for k, v in module.state_dict().items()}
    from rltrain.engine.model import no_hf_progress_bars

    with no_hf_progress_bars():  # a "Writing model shards" bar per checkpoint
        module.save_pretrained(out_dir, state_dict=sd, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def staging_dir(run_dir: str | Path, step: int) -> Path:
    """Create the empty staging directory of checkpoint ``step`` (rank 0), removing stale ones.

    Sharded engines (DeepSpeed ZeRO) let every rank write its shard into it before rank 0 calls
    ``save_checkpoint(..., staging=...)``, which completes and renames it.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f"step_{step:06d}.tmp-{os.getpid()}"
    tmp.mkdir()
    return tmp


def save_checkpoint(run_dir: str | Path, step: int, *, trainer_state: dict, policy_writer=None, keep: int = 2,
                    staging: Path | None = None) -> Path:
    """Write checkpoint ``step`` atomically; ``policy_writer(dir)`` writes the HF policy into dir.

    Only rank 0 calls this. ``staging``: a directory from ``staging_dir`` that other ranks have
    already written their shards into; None = make a fresh one.
    """
    root = Path(run_dir) / "checkpoints"
    tmp = staging if staging is not None else staging_dir(run_dir, step)
    final = root / f"step_{step:06d}"
    if policy_writer is not None:
        policy_writer(tmp / "policy")
    torch.save({"step": step, "rng": rng_state(), **trainer_state}, tmp / "trainer.pt")
    _fsync_tree(tmp)
    (tmp / COMPLETE).write_text(str(step))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    complete = sorted(p for p in root.glob("step_*") if (p / COMPLETE).exists() and ".tmp" not in p.name)
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step_*") if ".tmp" not in p.name and (p / COMPLETE).exists()]
    return max(done, key=lambda p: int(p.name.split("_")[1])) if done else None


def model_dir(path: str | Path) -> str:
    """The Hugging Face model directory a path names: the directory itself (config.json), an
    rltrain checkpoint's ``policy/``, or a run directory's newest checkpoint's ``policy/``; any other
    string is returned as is (a hub id)."""
    p = Path(path).expanduser()
    if (p / "config.json").is_file():
        return str(p)
    if (p / "policy" / "config.json").is_file():
        return str(p / "policy")
    ckpt = latest_checkpoint(p) if p.is_dir() else None
    return str(ckpt / "policy") if ckpt is not None else str(path)


def load_trainer_state(ckpt: Path) -> dict:
    state = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=False)
    set_rng_state(state["rng"])
    return state
