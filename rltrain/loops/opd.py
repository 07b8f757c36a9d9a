"""On-policy distillation (``algo=opd``): the student samples, a frozen teacher scores every token.

Per step (docs/algorithms.md §10):
  1. sample and score ``samples_per_prompt`` responses per prompt with the student (GRPO's
     ``collect``: the task reward is computed and logged whatever ``reward_weight``);
  2. the student's π_old and the teacher's log-probs of the sampled tokens, both with the training
     forward at the rollout temperature;
  3. per-token advantage Â_t = −(log π_old(y_t) − log π_teacher(y_t)), the negative per-token
     reverse-KL estimate, discount 0 (each token is credited with its own term only), plus
     ``reward_weight`` × the task-reward advantage of the GRPO estimator when > 0;
  4. the shared policy update (``PolicyUpdate``, the configured policy loss) on those advantages,
     with π_old from step 2.

Departures: the advantage is not whitened (its scale is the KL's, in nats per token, and a student
that matches the teacher gets 0); ``algo.kl_coef`` would add a KL loss to the *initial* policy,
which distillation does not need (default 0).
"""
from __future__ import annotations

import time

import torch

from rltrain.algos import core
from rltrain.config import RunConfig
from rltrain.engine.dist import Dist
from rltrain.loops import episodes, grpo, lifecycle, setup
from rltrain.loops.pg import PGBatch, PolicyUpdate
from rltrain.report.samples import rollout_rows
from rltrain.rollout import forward


def distill_advantages(student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Â_t = −(log π_student(y_t) − log π_teacher(y_t)) on valid tokens, 0 at padding (``[N, T]``)."""
    return (teacher_logp - student_logp) * mask


def train(cfg: RunConfig, dist: Dist) -> dict:
    torch.manual_seed(cfg.seed)
    a, t = cfg.algo, cfg.train
    ctx = setup.Context(cfg, dist, total_optimizer_steps=t.total_optimizer_steps, with_reference=a.kl_coef > 0,
                        with_teacher=True)
    update = PolicyUpdate(cfg)
    ts, logger, before, clock = lifecycle.start(cfg, ctx, dist, "rltrain opd")
    pad, temp, mb = ctx.tok.pad_token_id, cfg.rollout.scoring_temperature, t.micro_batch_size
    for step in clock.steps():
        t0 = time.time()
        # step 1: sample and score
        with setup.rollout_gathered(ctx):
            s, times = grpo.collect(step, ctx, cfg, dist)
        # step 2: student π_old and teacher log-probs of the sampled tokens
        t1 = time.time()
        old_logp, old_ent = forward.batched_logprobs(ctx.actor.module, s.prompt_ids, s.response_ids, pad_id=pad,
                                                     temperature=temp, micro_batch_size=mb, with_entropy=True)
        teacher_logp, _ = forward.batched_logprobs(ctx.teacher, s.prompt_ids, s.response_ids, pad_id=pad,
                                                   temperature=temp, micro_batch_size=mb)
        times["time/teacher"] = time.time() - t1
        # step 3: advantages
        adv = distill_advantages(old_logp, teacher_logp, s.mask)  # [N, T]
        ref_logp = None
        if a.reward_weight > 0 or ctx.ref is not None:
            # π_old from step 2: a KL-in-reward estimator reuses it instead of a second forward
            task_adv, ref_logp, _, _ = grpo.advantages(ctx, cfg, dist, s, times, old_logp=old_logp,
                                                       old_entropy=old_ent)
            adv = adv + a.reward_weight * task_adv
        # step 4: the policy update
        batch = PGBatch(s.prompt_ids, s.response_ids, s.mask, adv, ref_logp, old_logp=old_logp, old_entropy=old_ent,
                        rollout_entropy=s.entropies, rollout_logp=s.logprobs)
        metrics = update.run(ctx.actor, batch, dist, pad_id=pad, step=step,
                             generator=episodes.update_generator(cfg.seed, step))
        setup.push_weights(ctx, metrics)  # rollout.engine=vllm: the next rollout samples with the updated weights
        # step 5: metrics, samples, evaluation, logging, checkpoint
        valid = s.mask.bool()
        kl = dist.sum(torch.stack([core.masked_sum(old_logp - teacher_logp, valid).double(),
                                   valid.sum().double()]))
        metrics["opd/reverse_kl"] = kl[0].item() / max(kl[1].item(), 1.0)  # per token, the student's samples
        metrics.update(episodes.rollout_metrics(s, times, dist))
        metrics.update(times)
        metrics["time/step"] = time.time() - t0
        if logger:  # samples.jsonl: the first rollouts of rank 0's batch
            logger.samples(step + 1, "train", rollout_rows(s, adv, limit=cfg.log.samples_per_step))
        if lifecycle.end_step(cfg, ctx, dist, clock, step + 1, metrics, logger=logger,
                              save=lambda: lifecycle.save(cfg, dist, ts, ctx.actor, ctx.tok)):
            break
    return lifecycle.final_eval(cfg, ctx, dist, logger, before, step=clock.step)
