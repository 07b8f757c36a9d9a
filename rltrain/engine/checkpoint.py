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

A checkpoint that does not fit on the disk is not started: ``save_checkpoint`` compares the free
space with the bytes it is about to write and raises :class:`CheckpointSpaceError` (also when the
disk fills up while writing), after removing its staging directory; the checkpoints already on
disk are untouched, so the run resumes from the last of them once space is freed.
"""
from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

COMPLETE = "COMPLETE"
_MARGIN = 32 << 20  # bytes kept free beyond a checkpoint's tensors (file headers, tokenizer, metadata)


class CheckpointSpaceError(OSError):
    """A checkpoint does not fit in the free space of its disk (the CLI prints it as one line)."""


def tensor_bytes(obj) -> int:
    """Bytes of every tensor in a nested dict / list / tuple (what ``torch.save`` writes, give or take headers)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


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
                    staging: Path | None = None, policy_bytes: int = 0) -> Path:
    """Write checkpoint ``step`` atomically; ``policy_writer(dir)`` writes the HF policy into dir.

    Only rank 0 calls this. ``staging``: a directory from ``staging_dir`` that other ranks have
    already written their shards into; None = make a fresh one. ``policy_bytes``: what
    ``policy_writer`` will write, for the free-space check (trainer.pt's size is counted here).

    Raises:
        CheckpointSpaceError: the disk has less free space than the checkpoint needs, or filled up
            while it was written; the staging directory is removed and older checkpoints are kept.
    """
    root = Path(run_dir) / "checkpoints"
    tmp = staging if staging is not None else staging_dir(run_dir, step)
    final = root / f"step_{step:06d}"
    need = policy_bytes + tensor_bytes(trainer_state) + _MARGIN
    free = shutil.disk_usage(tmp).free
    if free < need:
        _abandon(tmp, root, step, f"it needs about {need >> 20} MB and {free >> 20} MB are free")
    try:
        if policy_writer is not None:
            policy_writer(tmp / "policy")
        with open(tmp / "trainer.pt", "wb") as f:  # a Python file: a full disk raises OSError(ENOSPC)
            torch.save({"step": step, "rng": rng_state(), **trainer_state}, f)
        _fsync_tree(tmp)
        (tmp / COMPLETE).write_text(str(step))
    except (OSError, RuntimeError) as err:
        # torch's writer reports a failed write as RuntimeError ("unexpected pos ..."), so a full
        # disk is recognised by its errno where there is one, else by the space left.
        full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or shutil.disk_usage(tmp).free < _MARGIN
        if not full:
            raise
        _abandon(tmp, root, step, f"the disk filled up while writing it ({need >> 20} MB expected)", err)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    complete = sorted(p for p in root.glob("step_*") if (p / COMPLETE).exists() and ".tmp" not in p.name)
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _abandon(tmp: Path, root: Path, step: int, why: str, cause: BaseException | None = None) -> None:
    """Remove the staging directory of checkpoint ``step`` and raise CheckpointSpaceError."""
    shutil.rmtree(tmp, ignore_errors=True)
    last = latest_checkpoint(root.parent)
    kept = (f"the last complete checkpoint ({last.name}) is intact and resume=auto continues from it"
            if last is not None else "no earlier checkpoint exists")
    err = CheckpointSpaceError(f"no space for checkpoint step {step} in {root}: {why}; {kept}. Free space on "
                               f"that disk, lower checkpoint.keep, or set hydra.run.dir to a larger disk")
    err.errno = errno.ENOSPC
    raise err from cause


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
