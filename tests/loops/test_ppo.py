"""PPO on model=tiny: the real CLI learns a toy reward (truncated responses unscored, as ReaLHF),
the critic's explained variance rises (and the warm-up leaves the actor alone), the reference EMA
does what η says, and a run resumed from a checkpoint reproduces the uninterrupted one (critic,
value normaliser, KL coefficient and EMA reference included)."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from rltrain import launch
from rltrain.cli import compose_or_explain, to_run_config
from rltrain.config import register_configs
from rltrain.engine.dist import Dist
from rltrain.loops import ppo
from tests.cli import run_inprocess

REPO = Path(__file__).resolve().parents[2]
register_configs()

TINY = ["algo=ppo", "model=tiny", "data.n_train=64", "data.n_test=8", "eval.size=8", "eval.max_new_tokens=8",
        "reward=python", "rollout.max_new_tokens=8", "train.prompts_per_step=4", "train.samples_per_prompt=8",
        "train.micro_batch_size=16", "launch.threads_per_rank=1", "log.console=false"]
# A response finishes when it emits a '7' (and then scores 1); one without a '7' is truncated at 12
# tokens, gets no score and bootstraps from the critic.
LEARN = TINY + ["reward.fn=tests.toy_rewards:contains_seven", 'rollout.stop_strings=["7"]', "train.steps=12",
                "rollout.max_new_tokens=12", "train.prompts_per_step=8", "train.minibatches_per_step=2",
                "train.micro_batch_size=32", "train.lr=2e-3", "algo.critic_lr=2e-3", "checkpoint.every=4",
                "checkpoint.keep=3", "algo.adaptive_kl=true", "algo.kl_horizon=100"]


def metrics(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "event" not in r], [r for r in rows if "event" in r]


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ppo") / "run"
    run_inprocess(LEARN, run_dir)
    return run_dir


def test_ppo_cli_learns_the_toy_reward(ppo_run):
    rows, events = metrics(ppo_run)
    assert [r["step"] for r in rows] == list(range(1, 13))
    first = sum(r["reward/mean"] for r in rows[:3]) / 3
    last = sum(r["reward/mean"] for r in rows[-3:]) / 3
    assert first < 0.3 and last > 0.6, (first, last)  # the random tiny model emits a '7' in ~13% of 12 tokens
    assert rows[-1]["response/length_mean"] < rows[0]["response/length_mean"]  # it stops at the '7' sooner
    assert events[0]["accuracy"] < events[-1]["accuracy"]  # greedy held-out score rises too
    assert rows[-1]["kl/coef"] != rows[0]["kl/coef"]  # the adaptive controller moved β
    assert (ppo_run / "critic" / "value_head.pt").exists()


def test_ppo_resumed_from_a_checkpoint_reproduces_the_run(ppo_run, tmp_path):
    dst = tmp_path / "resumed"
    shutil.copytree(ppo_run, dst)
    for ckpt in (dst / "checkpoints").glob("step_*"):
        if int(ckpt.name.split("_")[1]) > 8:
            shutil.rmtree(ckpt)
    cfg = launch.load_config(dst)
    cfg.run_dir = str(dst)
    launch.launch(cfg)
    a, _ = metrics(ppo_run)
    b, _ = metrics(dst)
    assert [r["step"] for r in b] == list(range(1, 13))
    for ra, rb in zip(a, b):
        for k in ra:
            if not (k.startswith(("time/", "perf/")) or k == "wall_time"):
                assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), (ra["step"], k)


def test_critic_explained_variance_rises_and_warmup_keeps_the_actor(tmp_path):
    """The return depends only on the prompt ('7' in the question); during the critic warm-up
    the actor is frozen, so the critic sees a fixed target and must learn to predict it (a tiny
    critic needs ~40 updates before it finds the '7': 8 per step here)."""
    cfg = to_run_config(compose_or_explain(TINY + [
        "reward.fn=tests.toy_rewards:prompt_has_seven", "train.steps=10", "train.prompts_per_step=16",
        "train.samples_per_prompt=2", "train.minibatches_per_step=4", "train.epochs=2", "train.micro_batch_size=8",
        "algo.critic_lr=3e-3", "algo.score_truncated=true", "algo.critic_warmup_steps=10", "eval.at_start=false"]))
    cfg.run_dir = str(tmp_path)
    start = torch.cat([p.detach().flatten().clone() for p in ppo.build_context(cfg, Dist())[0].actor.module.parameters()])
    launch.launch(cfg)
    rows, _ = metrics(tmp_path)
    ev = [r["critic/explained_var"] for r in rows]
    assert ev[0] == 0.0  # zero value head: a constant prediction explains nothing
    assert sum(ev[-3:]) / 3 > 0.5, ev
    assert all("actor/grad_norm" not in r for r in rows)  # warm-up: no actor update at all
    final, _ = ppo.build_context(cfg, Dist())  # built fresh, then loaded from the run's last checkpoint
    ppo.lifecycle.resume(cfg, final.actor)
    after = torch.cat([p.detach().flatten() for p in final.actor.module.parameters()])
    torch.testing.assert_close(after, start, rtol=0, atol=0)


def _one_step(tmp_path, eta):
    cfg = to_run_config(compose_or_explain(TINY + ["reward.fn=tests.toy_rewards:contains_seven", "train.lr=1e-2",
                                                   f"algo.ref_ema={eta}", "algo.score_truncated=true"]))
    cfg.run_dir = str(tmp_path)
    ctx, st = ppo.build_context(cfg, Dist())
    ref_before = {k: v.clone() for k, v in ctx.ref.state_dict().items()}
    ppo.ppo_step(ctx, st, cfg, Dist(), 0)
    actor = ctx.actor.module.state_dict()
    return ctx, ref_before, actor


@pytest.mark.parametrize("eta", [1.0, 0.0, 0.5])
def test_reference_ema(tmp_path, eta):
    ctx, ref_before, actor = _one_step(tmp_path, eta)
    ref = ctx.ref.state_dict()
    moved = [k for k in actor if not torch.equal(actor[k], ref_before[k])]
    assert moved, "the actor did not change: the test could not tell η apart"
    for k in ref:
        torch.testing.assert_close(ref[k], eta * actor[k] + (1 - eta) * ref_before[k], rtol=0, atol=1e-6)
