"""SFT on model=tiny: the real CLI learns arith's worked solutions (prompt masked), and the loss
and update do not depend on the micro-batch size."""
import json
from pathlib import Path

import pytest
import torch

from rltrain.cli import compose_or_explain, to_run_config
from rltrain.config import register_configs
from rltrain.engine.dist import Dist
from rltrain.loops import sft
from tests.cli import run_inprocess

REPO = Path(__file__).resolve().parents[2]
register_configs()

TINY = ["algo=sft", "model=tiny", "data=arith", "data.n_train=32", "data.n_test=8", "eval.size=8",
        "eval.max_new_tokens=8", "train.prompts_per_step=8", "train.lr=3e-3", "launch.threads_per_rank=1",
        "log.console=false"]


def test_sft_cli_learns_the_worked_solutions(tmp_path):
    run_inprocess(TINY + ["train.steps=12", "train.micro_batch_size=4"], tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "event" not in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    # A random 100-character model starts near ln(100) ≈ 4.6 nats per token and must drop well below.
    assert steps[0]["sft/nll"] > 4.0 and steps[-1]["sft/nll"] < 0.75 * steps[0]["sft/nll"]
    assert [r["step"] for r in rows if r.get("event") == "eval"] == [0, 12]
    assert (tmp_path / "checkpoints" / "step_000012" / "COMPLETE").exists()


def _one_step(micro_batch_size: int):
    cfg = to_run_config(compose_or_explain(TINY + [f"train.micro_batch_size={micro_batch_size}", "reward=python",
                                                   "reward.fn=tests.toy_rewards:sevens"]))
    ctx = sft.build_context(cfg, Dist())
    out = sft.sft_step(ctx, cfg, Dist(), 0)
    return out, torch.cat([p.detach().flatten() for p in ctx.actor.module.parameters()])


def test_micro_batch_size_changes_neither_the_loss_nor_the_update():
    big, w_big = _one_step(8)
    small, w_small = _one_step(3)  # uneven micro-batches: 3 + 3 + 2
    assert small["sft/nll"] == pytest.approx(big["sft/nll"], rel=1e-5)
    assert small["actor/grad_norm"] == pytest.approx(big["actor/grad_norm"], rel=1e-4)
    torch.testing.assert_close(w_small, w_big, rtol=0, atol=1e-4)  # Adam's first step ≈ lr·sign(g)
