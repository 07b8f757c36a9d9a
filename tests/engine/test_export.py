"""``rltrain-export``: a checkpoint's policy becomes a standalone HF directory that
``AutoModelForCausalLM.from_pretrained`` loads with the training model's logits. (The same for a
policy gathered from ZeRO-3 shards: tests/engine/test_deepspeed.py.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rltrain.config import GRPOConfig, ModelConfig, RunConfig
from rltrain.engine.dist import Dist
from rltrain.engine.export import ExportError, export
from rltrain.loops import lifecycle, setup

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run with checkpoints at steps 1 and 2 (a plain fp32 tiny actor); returns (dir, logits)."""
    run = tmp_path_factory.mktemp("run")
    cfg = RunConfig(algo=GRPOConfig(), model=ModelConfig(name="tiny", dtype="fp32"), run_dir=str(run))
    cfg.checkpoint.keep = 5
    dist = Dist()
    actor, tok = setup.build_actor(cfg, dist, total_optimizer_steps=2)
    ids = torch.tensor([tok("12+30=").input_ids])
    logits = {}
    for step in (1, 2):
        loss = actor.module(input_ids=ids, labels=ids).loss
        actor.backward(loss)
        actor.step()
        lifecycle.save(cfg, dist, lifecycle.TrainState(step=step), actor, tok)
        with torch.no_grad():
            logits[step] = actor.module(input_ids=ids).logits
    return run, ids, logits


def load_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoTokenizer.from_pretrained(path)  # the tokenizer travels with the weights
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_cli_exports_newest_and_chosen_step(run_dir, tmp_path):
    run, ids, logits = run_dir
    out = subprocess.run([sys.executable, "-m", "rltrain.engine.export", str(run)], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out) == run / "export" / "step_000002"
    torch.testing.assert_close(load_logits(Path(out), ids), logits[2], rtol=1e-6, atol=1e-6)

    chosen = export(run, step=1, out=tmp_path / "hf1")
    torch.testing.assert_close(load_logits(chosen, ids), logits[1], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(logits[1], logits[2])  # the two checkpoints really differ


def test_clear_errors(run_dir, tmp_path):
    run, *_ = run_dir
    with pytest.raises(ExportError, match="available steps: 1, 2"):
        export(run, step=7)
    with pytest.raises(ExportError, match="no complete checkpoint"):
        export(tmp_path)
    export(run, step=1, out=tmp_path / "once")
    with pytest.raises(ExportError, match="not empty"):
        export(run, step=1, out=tmp_path / "once")
    p = subprocess.run([sys.executable, "-m", "rltrain.engine.export", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True)
    assert p.returncode == 2 and "no complete checkpoint" in p.stderr
