"""Synthetic run directories in the format the training loops write (config.yaml + metrics.jsonl)."""
import json
from pathlib import Path

import pytest
import yaml


def write_run(path: Path, config: dict, step_rows: list[dict], evals: list[dict], *, overrides=None,
              trailing: str = "") -> Path:
    """A run directory: eval event rows interleaved by step, like RunLogger writes them."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    if overrides is not None:
        (path / ".hydra").mkdir(exist_ok=True)
        (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    lines = []
    ev = {e["step"]: e for e in evals}
    if 0 in ev:
        lines.append(json.dumps({"step": 0, "event": "eval", **{k: v for k, v in ev[0].items() if k != "step"}}))
    for row in step_rows:
        lines.append(json.dumps(row))
        e = ev.get(row["step"])
        if e is not None and row["step"] > 0:
            lines.append(json.dumps({"step": row["step"], "event": "eval",
                                     **{k: v for k, v in e.items() if k != "step"}}))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + trailing)
    return path


def grpo_config(**policy_loss) -> dict:
    return {"algo": {"name": "grpo", "kl_coef": 0.0}, "policy_loss": policy_loss or {"name": "clip", "clip_low": 0.2},
            "model": {"name": "tiny"}, "train": {"steps": 10, "lr": 1e-5}, "seed": 0,
            "run_dir": "/somewhere", "log": {"console": False}}


@pytest.fixture
def make_run():
    return write_run


@pytest.fixture
def config():
    return grpo_config
