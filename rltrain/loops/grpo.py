"""GRPO (DeepSeekMath) with the DAPO and Dr. GRPO variants, as one explicit loop.

Per step: sample ``samples_per_prompt`` responses for each of ``prompts_per_step`` prompts →
score them → group-normalised advantages broadcast to every response token → (reference
log-probs, only when ``algo.kl_coef > 0``) → ``PolicyUpdate`` (clipped surrogate or the
configured policy loss, token selection, aggregation) → metrics → checkpoint.

Departures from the paper, all deliberate and configurable:
- The default aggregation is ``token-mean`` (DAPO / verl); the paper's per-sequence mean is
  ``algo.loss_agg_mode=seq-mean-token-mean``.
- The default KL coefficient is 0 (DAPO, Dr. GRPO); with β = 0 no reference model is built and
  no reference forward runs. DeepSeekMath used a k3 KL loss with β = 0.04.
- Group std uses ddof = 1 (verl); ``algo.std_ddof=0`` gives the population std.
- DAPO dynamic sampling (``algo.dynamic_sampling=true``) keeps sampling prompt batches until the
  step has ``prompts_per_step`` groups with mixed rewards, then trims to exactly that many.

Other estimators (``algo.adv_estimator``): rloo (leave-one-out baseline), reinforce_pp (REINFORCE++:
the KL to the reference in the token rewards, returns whitened over the global batch) and
reinforce_pp_baseline (the group-centred outcome whitened over the global batch, the KL a loss
term). ``reward=combined reward.normalize=then_sum`` is GDPO: each reward component normalised within
its group before the weighted sum, and the sum normalised over the batch is the advantage (the group
step is not applied again; ``reward.sum_normalize=group`` gives the sum to it instead).
"""
from __future__ import annotations

import time

import torch

from rltrain.algos import core, registry
from rltrain.algos.grpo import dynamic_sampling_keep, overlong_penalty
from rltrain.config import RunConfig
from rltrain.engine.dist import Dist
from rltrain.loops import episodes, lifecycle, setup
from rltrain.rollout import forward
from rltrain.loops.pg import PGBatch, PolicyUpdate
from rltrain.report.samples import rollout_rows


def collect(step: int, ctx, cfg: RunConfig, dist: Dist) -> tuple[episodes.Scored, dict]:
    """Sample and score this rank's prompts for ``step`` (with DAPO refills when enabled)."""
    a, t = cfg.algo, cfg.train
    n, per_rank = t.samples_per_prompt, t.prompts_per_step // dist.world_size
    times = {"time/rollout": 0.0, "time/reward": 0.0}
    parts, kept, batches = [], 0, 0
    while True:
        # Refill batches draw prompts beyond the step's own slice, deterministically.
        draw = step * max(1, a.max_gen_batches if a.dynamic_sampling else 1) + batches
        idx, first = episodes.rank_slice(ctx.order, draw, t.prompts_per_step, dist)
        samples = [ctx.train[i] for i in idx]
        prompt_ids = [ctx.train_ids[i] for i in idx]
        s, tm = episodes.rollout_and_score(ctx.actor.module, ctx.tok, samples, prompt_ids, ctx.reward, cfg, n=n,
                                    generator=episodes.rollout_generator(cfg.seed, draw), first_prompt_index=first,
                                    sampler=ctx.sampler)
        for k in times:
            times[k] += tm[k]
        batches += 1
        episodes.gdpo(s, ctx.reward, cfg, n, eps=a.adv_eps, std_ddof=a.std_ddof)  # reward.normalize=then_sum
        if a.overlong_buffer > 0:
            s.scores = s.scores + overlong_penalty(s.lengths, max_len=cfg.rollout.max_new_tokens,
                                                   cache_len=a.overlong_buffer, factor=a.overlong_factor)
        if not a.dynamic_sampling:
            return s, times
        keep = dynamic_sampling_keep(s.scores, n)
        parts.append(s.select([i for i in range(len(s.completions)) if keep[i // n]]))
        kept += int(keep.sum())
        enough = dist.sum(torch.tensor([float(kept >= per_rank)])).item() == dist.world_size
        if enough:
            s = episodes.Scored.cat(parts)
            times["gen_batches"] = batches
            return s.select(list(range(per_rank * n))), times
        if 0 < a.max_gen_batches <= batches:
            raise RuntimeError(
                f"algo.dynamic_sampling: only {kept} of {per_rank} groups with mixed rewards after "
                f"{batches} generation batches (algo.max_gen_batches={a.max_gen_batches}); the task is too "
                "easy or too hard for the policy — raise algo.max_gen_batches or rollout.temperature")


def advantages(ctx, cfg: RunConfig, dist: Dist, s: episodes.Scored, times: dict, *,
               old_logp: torch.Tensor | None = None, old_entropy: torch.Tensor | None = None):
    """Per-token advantages ``[N, T]`` of the configured estimator, the reference log-probs for the
    KL loss (None without one, or when the KL is in the reward) and π_old's log-probs and entropies
    (those given, or computed here when the estimator needed them; else None).

    grpo / rloo / reinforce_pp_baseline: one outcome advantage per response, broadcast to its tokens;
    the KL (β > 0) is a loss term. reinforce_pp (``kl_in_reward``): β is the k1 penalty folded into the
    token rewards, with π_old's log-probs from the training forward (so the update reuses them;
    pass ``old_logp``/``old_entropy`` when the caller already has them), then returns-to-go
    whitened over the global batch (``whiten``: the estimator's own normalisation).
    """
    a, pad, temp, mb = cfg.algo, ctx.tok.pad_token_id, cfg.rollout.scoring_temperature, cfg.train.micro_batch_size
    est = registry.ADV_ESTIMATORS[a.adv_estimator]
    ref_logp = kl = None
    if ctx.ref is not None:
        t1 = time.time()
        ref_logp, _ = forward.batched_logprobs(ctx.ref, s.prompt_ids, s.response_ids, pad_id=pad, temperature=temp,
                                               micro_batch_size=mb)
        times["time/reference"] = time.time() - t1
        if est.kl_in_reward:
            if old_logp is None:
                old_logp, old_entropy = forward.batched_logprobs(ctx.actor.module, s.prompt_ids, s.response_ids,
                                                                 pad_id=pad, temperature=temp, micro_batch_size=mb,
                                                                 with_entropy=True)
            kl = core.kl_estimate(old_logp, ref_logp, "k1")  # [N, T]
    gdpo_adv = episodes.gdpo_batch_scores(s, cfg, dist, eps=a.adv_eps, std_ddof=a.std_ddof)  # [N] or None
    if gdpo_adv is not None:  # GDPO (reward.sum_normalize=batch): the batch-normalised sum, no group step after
        adv_tok = gdpo_adv[:, None].expand_as(s.mask).contiguous()  # [N, T]
    else:
        adv_tok = est.fn(s.scores, s.mask, group_size=cfg.train.samples_per_prompt, kl=kl, kl_coef=a.kl_coef,
                         scale=a.adv_scale, eps=a.adv_eps, std_ddof=a.std_ddof)  # [N, T]
    if est.whiten or a.adv_whiten == "batch":  # adv_whiten=batch: SPO's recipe, to compare both under one trainer
        valid = s.mask.bool()
        adv_tok = core.masked_whiten(adv_tok, valid, moments=dist.sum(core.masked_moments(adv_tok, valid)))
    return adv_tok, (None if est.kl_in_reward else ref_logp), old_logp, old_entropy


def train(cfg: RunConfig, dist: Dist) -> dict:
    torch.manual_seed(cfg.seed)
    ctx = setup.Context(cfg, dist, total_optimizer_steps=cfg.train.total_optimizer_steps,
                        with_reference=cfg.algo.kl_coef > 0)
    update = PolicyUpdate(cfg)
    ts, logger, before, clock = lifecycle.start(cfg, ctx, dist, f"rltrain {cfg.algo.name}")
    pad = ctx.tok.pad_token_id
    for step in clock.steps():
        t0 = time.time()
        # step 1: sample and score this rank's prompts (DAPO refills when enabled)
        with setup.rollout_gathered(ctx):  # ZeRO-3: the actor's parameters gathered once for the rollout phase
            s, times = collect(step, ctx, cfg, dist)
        # step 2: advantages [N, T], with the reference's log-probs for a KL loss
        adv_tok, ref_logp, old_logp, old_ent = advantages(ctx, cfg, dist, s, times)
        # step 3: the policy update
        batch = PGBatch(s.prompt_ids, s.response_ids, s.mask, adv_tok, ref_logp, rollout_entropy=s.entropies,
                        rollout_logp=s.logprobs, old_logp=old_logp, old_entropy=old_ent)
        metrics = update.run(ctx.actor, batch, dist, pad_id=pad, step=step,
                             generator=episodes.update_generator(cfg.seed, step))
        # step 4: metrics, samples, evaluation, logging, checkpoint
        setup.push_weights(ctx, metrics)  # rollout.engine=vllm: the next rollout samples with the updated weights
        metrics.update(episodes.rollout_metrics(s, times, dist))
        metrics.update(times)
        metrics["time/step"] = time.time() - t0
        if logger:  # samples.jsonl: the first rollouts of rank 0's batch
            logger.samples(step + 1, "train", rollout_rows(s, adv_tok, limit=cfg.log.samples_per_step))
        if lifecycle.end_step(cfg, ctx, dist, clock, step + 1, metrics, logger=logger,
                      save=lambda: lifecycle.save(cfg, dist, ts, ctx.actor, ctx.tok)):
            break
    return lifecycle.final_eval(cfg, ctx, dist, logger, before, step=clock.step)
