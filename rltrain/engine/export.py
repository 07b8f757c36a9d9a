"""``rltrain-export RUN_DIR [--step N] [--out DIR]``: a checkpoint's policy as a standalone Hugging
Face model directory (config.json, model.safetensors, tokenizer), loadable with
``AutoModelForCausalLM.from_pretrained``.

Every checkpoint already holds its policy in HF format (``checkpoints/step_N/policy``), written by
rank 0 from the fp32 master weights, gathered from the ZeRO partitions when training was sharded.
Exporting picks the checkpoint (the newest complete one, or ``--step``), checks the directory is
a complete HF model, and copies it atomically to ``--out`` (default ``RUN_DIR/export/step_N``).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from rltrain.engine.checkpoint import COMPLETE, latest_checkpoint


class ExportError(RuntimeError):
    """A run directory or checkpoint that cannot be exported; the message says why."""


def complete_steps(run_dir: Path) -> list[int]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name.split("_")[1]) for p in root.glob("step_*")
                  if ".tmp" not in p.name and (p / COMPLETE).exists())


def find_checkpoint(run_dir: Path, step: int | None) -> Path:
    """The checkpoint directory of ``step`` (or the newest complete one)."""
    steps = complete_steps(run_dir)
    if not steps:
        raise ExportError(f"{run_dir} has no complete checkpoint (looked in {run_dir}/checkpoints)")
    if step is None:
        return latest_checkpoint(run_dir)
    if step not in steps:
        raise ExportError(f"{run_dir} has no complete checkpoint for step {step}; "
                          f"available steps: {', '.join(map(str, steps))}")
    return run_dir / "checkpoints" / f"step_{step:06d}"


def check_hf_dir(policy: Path) -> None:
    """Raise unless ``policy`` holds a config, safetensors weights and a tokenizer."""
    missing = []
    if not (policy / "config.json").exists():
        missing.append("config.json")
    if not list(policy.glob("*.safetensors")):
        missing.append("*.safetensors")
    if not (policy / "tokenizer_config.json").exists():
        missing.append("tokenizer_config.json")
    if missing:
        raise ExportError(f"{policy} is not a complete HF model directory (missing: {', '.join(missing)})")


def export(run_dir: str | Path, step: int | None = None, out: str | Path | None = None) -> Path:
    """Copy checkpoint ``step``'s policy to ``out``; returns the exported directory."""
    run_dir = Path(run_dir)
    ckpt = find_checkpoint(run_dir, step)
    policy = ckpt / "policy"
    check_hf_dir(policy)
    target = Path(out) if out is not None else run_dir / "export" / ckpt.name
    if target.exists() and any(target.iterdir()):
        raise ExportError(f"{target} exists and is not empty; choose another --out or remove it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(policy, tmp)
    if target.exists():
        target.rmdir()
    tmp.rename(target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="rltrain-export",
        description="Write a run's checkpointed policy as a Hugging Face model directory.")
    parser.add_argument("run_dir", help="an rltrain run directory (holds checkpoints/)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest complete)")
    parser.add_argument("--out", default=None, help="output directory (default: RUN_DIR/export/step_N)")
    args = parser.parse_args(argv)
    try:
        target = export(args.run_dir, args.step, args.out)
    except ExportError as err:
        print(f"rltrain-export: {err}", file=sys.stderr)
        sys.exit(2)
    print(target)


if __name__ == "__main__":
    main()
