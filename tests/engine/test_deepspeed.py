"""DeepSpeedActor on a fixed batch, through the real policy-gradient update (``loops.pg``):

- 2 ranks under ZeRO-1, ZeRO-3 and ZeRO-3 with CPU offload (DeepSpeedCPUAdam) take the same
  optimizer steps as one plain process over the same global batch: per-step loss, grad norm, lr
  and the final fp32 weights agree within 1e-4 relative (fp32 model). The update has 2 minibatches
  per step and uneven micro-batches, with clipping and a warmup + linear LR schedule active.
  (ZeRO-2 and ZeRO-3 through the CLI's GRPO loop: tests/test_distributed.py.)
- ``gathered()`` gathers the ZeRO-3 parameters once for a whole rollout phase.
- Checkpoint shards under ZeRO-3: saving, continuing, and resuming in fresh processes give the
  same weights as an uninterrupted run.

Each case runs this file as a worker script (``python test_deepspeed.py worker ...``) in 1 or 2
processes with one thread each.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
N_PROMPTS, N_SAMPLES, T = 8, 2, 6
LR = 1e-3


# --------------------------------------------------------------------------- worker side


def _config(stage: int, offload: bool, run_dir: str):
    from rltrain.config import OPTIONS, DeepSpeedConfig, GRPOConfig, ModelConfig, RunConfig, TrainConfig

    name = {0: "none", 1: "zero1", 2: "zero2", 3: "zero3_offload" if offload else "zero3"}[stage]
    return RunConfig(
        algo=GRPOConfig(), token_selection=OPTIONS["token_selection"]["all"](),
        policy_loss=OPTIONS["policy_loss"]["clip"](),
        model=ModelConfig(name="tiny", dtype="fp32"),
        deepspeed=DeepSpeedConfig(name=name, stage=stage, offload_optimizer=offload, offload_params=offload),
        train=TrainConfig(steps=STEPS, prompts_per_step=N_PROMPTS, samples_per_prompt=N_SAMPLES,
                          minibatches_per_step=2, micro_batch_size=3, lr=LR, warmup_steps=2,
                          lr_schedule="linear", max_grad_norm=1.0),
        run_dir=run_dir, resume="never")


def _global_batch(vocab: int):
    """A deterministic batch of N_PROMPTS × N_SAMPLES sequences (prompt lengths and response
    lengths vary), group-structured like a GRPO rollout."""
    g = torch.Generator().manual_seed(1234)
    prompts = [torch.randint(4, vocab, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
               for _ in range(N_PROMPTS)]
    prompt_ids = [p for p in prompts for _ in range(N_SAMPLES)]
    response = torch.randint(4, vocab, (len(prompt_ids), T), generator=g)
    lengths = torch.randint(1, T + 1, (len(prompt_ids),), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    adv = torch.randn(len(prompt_ids), generator=g)[:, None].expand(-1, T).contiguous()
    return prompt_ids, response, mask, adv


def worker(out: str, stage: int, offload: bool, rank: int, world: int, port: int, mode: str) -> None:
    """Build the actor, run STEPS policy updates on this rank's slice, write losses and weights.

    mode: ``train`` | ``save`` (checkpoint after the first step, then go on; also count rollout
    gathers and record the training model's logits at the checkpoint) | ``resume=RUN_DIR``
    (continue from RUN_DIR's checkpoint instead of starting).
    """
    from rltrain.engine.dist import init_dist
    from rltrain.loops import lifecycle, setup
    from rltrain.loops.pg import PGBatch, PolicyUpdate

    torch.set_num_threads(1)
    out_dir = Path(out)
    cfg = _config(stage, offload, str(out_dir / "run"))
    if mode.startswith("resume="):
        cfg.resume = mode.split("=", 1)[1]
    dist = init_dist(rank, world, master_addr="127.0.0.1", master_port=port, timeout_s=120)
    actor, tok = setup.build_actor(cfg, dist, STEPS * cfg.train.minibatches_per_step)
    prompt_ids, response, mask, adv = _global_batch(len(tok))
    per_rank = len(prompt_ids) // world
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    batch = PGBatch(prompt_ids[rows], response[rows], mask[rows], adv[rows])

    policy_update = PolicyUpdate(cfg)

    def update(step):
        return policy_update.run(actor, batch, dist, pad_id=tok.pad_token_id, step=step,
                                 generator=torch.Generator().manual_seed(step))

    record = {"steps": []}
    start = lifecycle.resume(cfg, actor).step
    for step in range(start, STEPS):
        m = update(step)
        record["steps"].append({k: m[k] for k in ("actor/pg_loss", "actor/grad_norm", "actor/lr")})
        if mode == "save" and step == 0:
            lifecycle.save(cfg, dist, lifecycle.TrainState(step=1), actor, tok)
            with torch.no_grad():
                logits = actor.module(input_ids=torch.tensor([prompt_ids[0]])).logits
            if dist.is_main:
                torch.save(logits, out_dir / "logits_at_checkpoint.pt")
            record["gathers"] = _count_rollout_gathers(actor, prompt_ids[rows], tok)
    sd = actor.full_state_dict()
    if dist.is_main:
        torch.save(sd, out_dir / "weights.pt")
        (out_dir / "record.json").write_text(json.dumps(record))
    dist.barrier()


def _count_rollout_gathers(actor, prompt_ids, tok) -> dict:
    """ZeRO-3 all-gathers issued while sampling 8 tokens, without and inside ``gathered()``."""
    import deepspeed.comm as dcomm

    from rltrain.rollout import SamplingParams, generate

    backend = dcomm.comm.cdb
    real = backend.all_gather_into_tensor
    calls = {"n": 0}

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    def rollout() -> int:
        calls["n"] = 0
        generate(actor.module, prompt_ids[:2], SamplingParams(max_new_tokens=8, n=2), eos_token_ids=[-1],
                 pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0))
        return calls["n"]

    backend.all_gather_into_tensor = counting
    try:
        plain = rollout()
        with actor.gathered():
            inside = rollout()
    finally:
        backend.all_gather_into_tensor = real
    return {"plain": plain, "inside": inside}


# --------------------------------------------------------------------------- test side


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(out: Path, stage: int, world: int, *, offload: bool = False, mode: str = "train"):
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), LOCAL_RANK="0")
    procs = []
    for rank in range(world):
        env_r = dict(env, LOCAL_RANK=str(rank))
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "worker", str(out), str(stage), str(int(offload)), str(rank), str(world),
             str(port), mode], cwd=REPO, env=env_r, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, text in zip(procs, logs):
        assert p.returncode == 0, text[-6000:]
    return json.loads((out / "record.json").read_text()), torch.load(out / "weights.pt")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One plain process (LocalActor) over the whole batch."""
    return run_workers(tmp_path_factory.mktemp("plain"), stage=0, world=1)


def assert_same_run(got, want, rel=1e-4, outlier_frac=1e-3, step_frac=0.05):
    """Per-step loss, grad norm and lr, and every final weight, within ``rel`` (weights relative to
    the tensor's largest entry).

    Adam moves an entry by ~lr whatever the size of its gradient, so an entry whose gradient is a
    near-cancelling sum carries that sum's rounding (which depends on how ranks split and reduce it,
    and on the CPU's kernels: DeepSpeedCPUAdam's vector path) into its update as a fraction of lr.
    Measured on an AMD EPYC (Zen 4, ZeRO-3 + CPU Adam): 1 of 6,400 embedding entries differed by
    1.02e-5 (1.26e-4 of the tensor's largest entry, 1% of one Adam step). Such outliers are allowed
    up to ``step_frac`` of one step each, but only for at most ``outlier_frac`` of a tensor's
    entries: a real error (a wrong gradient scale, a missed micro-batch) moves most entries."""
    (rec_g, w_g), (rec_w, w_w) = got, want
    assert len(rec_g["steps"]) == len(rec_w["steps"])
    for i, (a, b) in enumerate(zip(rec_g["steps"], rec_w["steps"])):
        for k in b:
            assert a[k] == pytest.approx(b[k], rel=rel, abs=1e-7), (i, k, a[k], b[k])
    assert w_g.keys() == w_w.keys()
    for name in w_w:
        diff = (w_g[name] - w_w[name]).abs()
        scale = w_w[name].abs().max().item()
        outliers = int((diff > rel * scale).sum())
        assert outliers <= outlier_frac * diff.numel(), (name, outliers, diff.max().item(), scale)
        assert diff.max().item() <= rel * scale + step_frac * LR, (name, diff.max().item(), scale)


def test_baseline_trains(baseline):
    """The reference run itself moves the weights (else matching it would prove nothing)."""
    from rltrain.engine.model import build_tiny_model

    record, weights = baseline
    initial, _ = build_tiny_model(seed=0)
    moved = [(weights[k] - v).abs().max().item() for k, v in initial.state_dict().items()]
    assert min(moved) > 1e-4, moved
    assert record["steps"][0]["actor/grad_norm"] > 1.0  # clipping is active at max_grad_norm=1


@pytest.mark.parametrize("stage,offload", [(1, False), (3, True)], ids=["zero1", "zero3_offload_cpuadam"])
def test_two_ranks_match_one_process(tmp_path, baseline, stage, offload):
    assert_same_run(run_workers(tmp_path, stage=stage, world=2, offload=offload), baseline)


def test_zero3_checkpoint_resume_export_and_gathered_rollout(tmp_path, baseline):
    """ZeRO-3, 2 ranks: checkpoint after step 1 and go on; then resume that checkpoint in fresh
    processes. Both match the plain run; the checkpoint's HF policy reproduces the training
    model's logits; rollout inside ``gathered()`` issues no all-gather at all."""
    from transformers import AutoModelForCausalLM

    saved = run_workers(tmp_path / "save", stage=3, world=2, mode="save")
    assert_same_run(saved, baseline)
    gathers = saved[0]["gathers"]
    # Outside gathered(): at least one all-gather per generated token (8); inside: none at all.
    assert gathers["plain"] >= 8 and gathers["inside"] == 0, gathers

    ckpt = tmp_path / "save" / "run" / "checkpoints" / "step_000001"
    assert (ckpt / "COMPLETE").exists()
    shards = sorted(p.name for p in (ckpt / "actor" / "zero").glob("*optim_states.pt"))
    assert len(shards) == 2, shards  # one ZeRO partition per rank
    policy = AutoModelForCausalLM.from_pretrained(ckpt / "policy", dtype=torch.float32)
    prompt_ids, *_ = _global_batch(policy.config.vocab_size)
    with torch.no_grad():
        logits = policy(input_ids=torch.tensor([prompt_ids[0]])).logits
    torch.testing.assert_close(logits, torch.load(tmp_path / "save" / "logits_at_checkpoint.pt"),
                               rtol=1e-5, atol=1e-5)

    resumed = run_workers(tmp_path / "resume", stage=3, world=2,
                          mode=f"resume={tmp_path / 'save' / 'run'}")
    record, weights = resumed
    assert len(record["steps"]) == STEPS - 1
    tail = ({"steps": saved[0]["steps"][1:]}, saved[1])
    assert_same_run((record, weights), tail, rel=1e-6)


def test_resume_layout_mismatch_is_a_clear_error():
    """ZeRO shards only fit the stage and rank count that wrote them; a plain checkpoint only the
    plain actor (no processes needed: the check runs before anything is loaded)."""
    from rltrain.engine.actor import LocalActor
    from rltrain.engine.deepspeed import DeepSpeedActor
    from rltrain.engine.dist import Dist

    actor = DeepSpeedActor.__new__(DeepSpeedActor)
    actor.stage, actor.dist = 3, Dist(rank=0, world_size=2)
    actor.load_state_dict({"deepspeed_stage": 3, "world_size": 2})  # fits
    with pytest.raises(RuntimeError, match="ZeRO-3 shards of 4 ranks; resume it with deepspeed stage 3 and 4 ranks"):
        actor.load_state_dict({"deepspeed_stage": 3, "world_size": 4})
    with pytest.raises(RuntimeError, match="without DeepSpeed"):
        actor.load_state_dict({"master": [], "optimizer": {}, "scheduler": {}})
    with pytest.raises(RuntimeError, match="ZeRO-2 shards of 2 ranks"):
        LocalActor.load_state_dict(None, {"deepspeed_stage": 2, "world_size": 2})


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    _, _, out, stage, offload, rank, world, port, mode = sys.argv
    worker(out, int(stage), bool(int(offload)), int(rank), int(world), int(port), mode)
