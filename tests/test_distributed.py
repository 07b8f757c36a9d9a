"""Distributed GRPO and PPO through the real CLI on model=tiny (fp32), with ``launch.nproc_per_node=2``:

- GRPO: ZeRO-2 and ZeRO-3 runs on 2 ranks give the same per-step metrics (losses, entropy, grad
  norm, rewards, response lengths) and the same final weights as a plain 1-process run with the
  same global batch, within 1e-4 relative.
- PPO under ZeRO-3 (actor, critic and the moving reference sharded) likewise, critic included,
  with a large reference EMA (η = 0.5) so that a reference that does not follow the actor shows in
  the KL; a run resumed from its step-2 checkpoint ends where the uninterrupted one does (the
  critic's ZeRO shards and the reference's partitions are restored).
- A rank killed with SIGKILL makes ``rltrain`` exit within seconds with a message naming the rank
  and the signal, no worker is left behind, and rerunning the command (resume=auto) continues from
  the ZeRO-3 checkpoint to the same result as the uninterrupted run.

Rollouts are sampled at temperature 1: every sequence's random stream is keyed by (seed, step,
global prompt position, sample index), not by rank (``loops.episodes.rollout_generator``), so 1 and 2
ranks draw the same responses. A stop string ("7") gives responses of different lengths, so even
the first minibatch's token-mean surrogate (ratio 1) is non-zero.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tests.cli import start_cli  # noqa: E402

ARGS = [
    "model=tiny", "model.dtype=fp32", "data.n_train=64", "data.n_test=8", "eval.size=8", "eval.max_new_tokens=4",
    "eval.at_start=false", "reward=python", "reward.fn=tests.toy_rewards:sevens", "rollout.max_new_tokens=8",
    "rollout.temperature=1.0", 'rollout.stop_strings=["7"]', "algo.entropy_coef=0.1", "train.steps=3",
    "train.prompts_per_step=4", "train.samples_per_prompt=4", "train.minibatches_per_step=2",
    "train.micro_batch_size=2", "train.lr=1e-3", "checkpoint.every=1", "checkpoint.keep=3",
    "launch.threads_per_rank=1", "log.console=false",
    # The constant lr these tests were written with. With the default's cosine schedule the final greedy
    # evaluation of the 2-rank ZeRO-3 run deadlocks: its ranks stop decoding at different steps (the "7" stop
    # string), and DeepSpeed's forward pre-hook runs a collective while its module trace is incomplete, though
    # the policy is gathered. A known bug, open: docs/architecture.md "Known issues".
    "train.lr_schedule=constant",
]
COMPARED = ("actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/lr", "reward/mean",
            "response/length_mean")
PPO = ["algo=ppo", "algo.entropy_coef=0", "algo.kl_coef=0.1", "algo.ref_ema=0.5", "algo.critic_lr=1e-3"]
PPO_COMPARED = ("actor/pg_loss", "actor/grad_norm", "critic/value_loss", "critic/grad_norm", "critic/values_mean",
                "critic/explained_var", "kl/ref_seq", "reward/mean", "response/length_mean")


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    return start_cli([*ARGS, *extra], run_dir)


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


def critic_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The final critic (``save_critic``'s layout): backbone and value head."""
    head = torch.load(run_dir / "critic" / "value_head.pt")
    return {**load_file(run_dir / "critic" / "model.safetensors"), **{f"value_head.{k}": v for k, v in head.items()}}


def assert_same_weights(wa: dict, wb: dict, rel: float, step_frac: float = 0.0) -> None:
    """Within ``rel`` of each tensor's largest entry, and 1e-7 absolute: a parameter whose gradient is
    at Adam's eps (1e-8) scale, like the critic's value-head bias under normalised returns, moves by
    rounding-sized steps that depend on the summation order. ``step_frac``: further absolute slack
    (a fraction of one Adam step, lr): Adam moves an entry by ~lr whatever its gradient's size, so
    an entry whose gradient is a near-cancelling sum carries the sum's rounding noise (which depends
    on how ranks split and reduce it) into its update as a fraction of lr, not of its own size."""
    assert wa.keys() == wb.keys()
    for name in wb:
        diff = (wa[name] - wb[name]).abs().max().item()
        assert diff <= rel * wb[name].abs().max().item() + 1e-7 + step_frac, (name, diff)


def assert_same(got: Path, want: Path, rel: float = 1e-4, compared=COMPARED) -> None:
    a, b = metrics(got), metrics(want)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in b:
        for k in compared:
            assert a[step][k] == pytest.approx(b[step][k], rel=rel, abs=1e-7), (step, k)
    assert_same_weights(final_weights(got), final_weights(want), rel)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return run(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def zero3(tmp_path_factory):
    return run(tmp_path_factory.mktemp("zero3"), "deepspeed=zero3", "launch.nproc_per_node=2")


def test_plain_run_learns_something(plain):
    m = metrics(plain)
    assert m[1]["actor/grad_norm"] > 0 and m[1]["actor/entropy"] != m[3]["actor/entropy"]
    assert all(abs(m[s]["actor/pg_loss"]) > 1e-4 for s in m)  # non-zero advantages drive the update
    assert len({m[s]["response/length_mean"] for s in m}) > 1  # responses stop at different lengths


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


# --------------------------------------------------------------------------- PPO


@pytest.fixture(scope="module")
def plain_ppo(tmp_path_factory):
    return run(tmp_path_factory.mktemp("plain_ppo"), *PPO)


@pytest.fixture(scope="module")
def zero3_ppo(tmp_path_factory):
    return run(tmp_path_factory.mktemp("zero3_ppo"), *PPO, "deepspeed=zero3", "launch.nproc_per_node=2")


def test_ppo_plain_run_moves_the_reference(plain_ppo):
    m = metrics(plain_ppo)
    assert m[1]["kl/ref_seq"] == 0.0  # the reference starts as the policy
    assert m[2]["kl/ref_seq"] != 0.0 and m[1]["critic/grad_norm"] > 0


def test_ppo_zero3_two_ranks_match_one_process(zero3_ppo, plain_ppo):
    assert_same(zero3_ppo, plain_ppo, compared=PPO_COMPARED)
    # Measured on an Intel Xeon: the critic's embedding differs by 8.5e-6 (1.04e-4 of its largest
    # entry), under 1% of one critic Adam step (critic_lr = 1e-3); on an AMD EPYC it was within 1e-4.
    assert_same_weights(critic_weights(zero3_ppo), critic_weights(plain_ppo), 1e-4, step_frac=0.01 * 1e-3)


def test_ppo_zero3_resume_restores_critic_and_reference(tmp_path, zero3_ppo):
    resumed = tmp_path / "run"
    shutil.copytree(zero3_ppo, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000003")
    assert (resumed / "checkpoints" / "step_000002" / "critic" / "zero").is_dir()  # the critic's ZeRO shards
    assert len(list((resumed / "checkpoints" / "step_000002" / "reference").glob("rank*.pt"))) == 2
    run(resumed, *PPO, "deepspeed=zero3", "launch.nproc_per_node=2")  # resume=auto: from step 2
    assert_same(resumed, zero3_ppo, rel=1e-6, compared=PPO_COMPARED)
    assert_same_weights(critic_weights(resumed), critic_weights(zero3_ppo), 1e-6)


LORA = ["model.lora.r=4", "model.lora.alpha=8", "train.lr=1e-2"]


def test_lora_zero3_two_ranks_match_one_process(tmp_path):
    """LoRA adapters trained by a ZeRO-3 engine on 2 ranks (base weights frozen and sharded too)
    match a 1-process LoRA run; the exported policies hold the merged weights."""
    one = run(tmp_path / "one", *LORA)
    two = run(tmp_path / "two", *LORA, "deepspeed=zero3", "launch.nproc_per_node=2")
    assert_same(two, one)
    assert not any("lora" in k for k in final_weights(two))
    assert metrics(one)[3]["actor/grad_norm"] > 0


UNEVEN_DPO = ["algo=dpo", "algo.iterative=true", "algo.rounds=1", "reward.fn=tests.toy_rewards:char_sum_parity",
              "train.steps=2", "train.prompts_per_step=16", "train.samples_per_prompt=2", "train.micro_batch_size=2",
              "launch.timeout_s=90"]


def test_iterative_dpo_zero3_uneven_pairs_per_rank_match_one_process(tmp_path):
    """Iterative DPO under ZeRO-3 on 2 ranks, whose rounds keep different numbers of pairs (ties
    are dropped): the reference engine's forwards and the actor's passes are kept in lockstep with
    stand-ins, so the job neither hangs nor changes the loss: it matches 1 process."""
    one = run(tmp_path / "one", *UNEVEN_DPO)
    two = run(tmp_path / "two", *UNEVEN_DPO, "deepspeed=zero3", "launch.nproc_per_node=2")
    counts = [len(torch.load(two / "iterative" / f"round_000.rank{r}.pt", weights_only=False)["pairs"])
              for r in (0, 1)]
    assert counts[0] != counts[1], counts  # the case that used to hang
    a, b = metrics(two), metrics(one)
    assert sorted(a) == sorted(b) == [1, 2] and all(b[s]["dpo/pairs"] >= 2 for s in b)
    for step in b:
        for k in ("dpo/loss", "rewards/margin", "actor/grad_norm"):
            assert a[step][k] == pytest.approx(b[step][k], rel=1e-4, abs=1e-7), (step, k)


def test_spo_tree_zero3_uneven_edges_per_rank_finishes(tmp_path):
    """SPO-tree under ZeRO-3 on 2 ranks with a reference (β > 0) and high-entropy selection: both
    no-grad passes over a rank's edges (whose number differs per rank; at step 2 of this seed one
    rank draws none) run in lockstep, as does every forward: a rank's micro-batches make the same
    model calls whether or not their rows share a prompt."""
    out = run(tmp_path, "algo=spo_tree", "algo.branching=[2,2]", "algo.segment_len=2", "algo.kl_coef=0.1",
              "token_selection=high_entropy", "deepspeed=zero3", "launch.nproc_per_node=2", "launch.timeout_s=90")
    m = metrics(out)
    assert sorted(m) == [1, 2, 3] and m[1]["tree/edges_trained"] > 0 and m[1]["actor/grad_norm"] > 0
