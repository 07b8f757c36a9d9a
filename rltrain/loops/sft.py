"""Supervised fine-tuning (SFT): a warm start on (prompt, response) pairs with the prompt masked.

Per step: ``train.prompts_per_step`` examples (global; each rank takes its slice of a seeded
per-epoch permutation) → one forward per micro-batch of ``train.micro_batch_size`` sequences →
−log π(response token) aggregated with ``algo.loss_agg_mode`` (token-mean by default) using the
step's global token/sequence counts, so neither the micro-batch size nor the number of ranks
changes the loss → one optimizer step.

Data: any prompt dataset whose samples carry a worked solution (data=arith provides them; gsm8k
and math too), or a preference dataset, whose *chosen* responses are the targets. Responses end
with EOS and are truncated as in DPO (rltrain/loops/pairs.py). Evaluation is greedy generation
on the test split, scored by the configured reward, before and after training.
"""
from __future__ import annotations

import time

import torch

from rltrain.algos import core
from rltrain.config import RunConfig
from rltrain.engine.dist import Dist
from rltrain.loops import lifecycle, setup
from rltrain.loops.pairs import token_logps
from rltrain.loops.lifecycle import Metrics


def build_context(cfg: RunConfig, dist: Dist) -> setup.Context:
    """Actor, reward and the encoded examples; one optimizer step per training step."""
    return setup.Context(cfg, dist, total_optimizer_steps=cfg.train.steps, data="examples")


def sft_step(ctx: setup.Context, cfg: RunConfig, dist: Dist, step: int) -> dict:
    """One optimizer step on this rank's slice of the step's examples."""
    t, pad = cfg.train, ctx.tok.pad_token_id
    per_rank = t.prompts_per_step // dist.world_size
    idx = ctx.order.indices(step, t.prompts_per_step)[dist.rank * per_rank:(dist.rank + 1) * per_rank]
    batch = [ctx.train[i] for i in idx]
    # Global denominators: the loss is the same for any micro-batch size or rank count.
    local = torch.tensor([sum(len(e.responses[0]) for e in batch), len(batch)], dtype=torch.float64)
    counts = dist.sum(local)
    m = Metrics()
    for mb in lifecycle.chunks(len(batch), t.micro_batch_size):
        part = [batch[i] for i in mb]
        lp, mask = token_logps(ctx.actor.module, [e.prompt for e in part], [e.responses[0] for e in part],
                               pad_id=pad)  # [b, T]
        constant = cfg.algo.loss_agg_constant or float(cfg.algo.max_length)  # seq-mean-token-sum-norm's C
        loss = core.aggregate(-lp, mask, cfg.algo.loss_agg_mode, constant, num_tokens=counts[0], num_seqs=counts[1])
        lifecycle.finite_or_raise(loss, step)
        ctx.actor.backward(loss)
        n_tok = float(mask.sum())
        m.add("sft/nll", float(core.masked_mean(-lp.detach(), mask)), n_tok)
    m.add("actor/grad_norm", ctx.actor.step())
    out = m.reduce(dist)
    out["sft/tokens"] = counts[0].item()
    out["actor/lr"] = ctx.actor.lr
    return out


def train(cfg: RunConfig, dist: Dist) -> dict:
    torch.manual_seed(cfg.seed)
    ctx = build_context(cfg, dist)
    ts, logger, before, clock = lifecycle.start(cfg, ctx, dist, "rltrain sft")
    for step in clock.steps():
        t0 = time.time()
        # step 1: one optimizer step on this step's examples
        metrics = sft_step(ctx, cfg, dist, step)
        metrics["time/update"] = metrics["time/step"] = time.time() - t0
        # step 2: evaluation, logging, checkpoint
        if lifecycle.end_step(cfg, ctx, dist, clock, step + 1, metrics, logger=logger,
                      save=lambda: lifecycle.save(cfg, dist, ts, ctx.actor, ctx.tok)):
            break
    return lifecycle.final_eval(cfg, ctx, dist, logger, before, step=clock.step)
