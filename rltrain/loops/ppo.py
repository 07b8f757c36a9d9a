"""PPO with a critic for LLMs, with the three tricks of Xu et al. 2024, "Is DPO Superior to PPO for
LLM Alignment?" (official system: ReaLHF; docs/algorithms.md §2). Math: ``rltrain.algos.ppo``.

Per step:
  1. sample ``samples_per_prompt`` responses for each of ``prompts_per_step`` prompts, score them;
  2. π_old log-probs (and entropies) of the rollout with the training forward, reference log-probs,
     critic values V(s_0) … V(s_T) (the last bootstraps truncated responses);
  3. token rewards: −β·k1(π_old, π_ref) on every response token, plus the score clipped to
     ±``max_reward_clip`` on the last token of responses that finished (EOS or stop string);
     truncated responses get no score and bootstrap from the critic (``algo.score_truncated=true``:
     every response is scored and nothing bootstraps, verl's convention). β is fixed or adaptive
     (Ziegler et al.); ``algo.kl_in_reward=false`` moves the KL into the actor loss instead;
  4. GAE(γ, λ) → advantages and returns;
  5. trick 1, ``algo.adv_norm``: whiten the advantages over every response token of the step's
     batch, statistics all-reduced across ranks (``adv_norm_scope=per_minibatch``: per minibatch);
  6. actor: ``rltrain.loops.pg.PolicyUpdate`` — ``epochs`` × ``minibatches_per_step`` optimizer
     steps of the configured policy loss (clipped surrogate by default) with token selection, and
     a micro-batch whose mean ratio exceeds ``early_stop_ratio`` contributing nothing. Trick 2 (large
     batches) is the batch semantics of docs/architecture.md: ``prompts_per_step × samples_per_prompt``
     sequences split into ``minibatches_per_step`` minibatches;
  7. critic: the same minibatches, clipped value loss (token-mean) on its own optimizer and
     ``algo.critic_lr``; with ``algo.value_norm`` it learns normalised returns (running mean/std)
     and its outputs are denormalised for GAE. For the first ``critic_warmup_steps`` steps only the
     critic trains;
  8. trick 3, ``algo.ref_ema`` = η: reference ← η·actor + (1 − η)·reference after every actor
     update, on fp32 copies (a bf16 EMA with η = 0.001 would round every update away); under
     ZeRO-3 each rank updates only its partition of the sharded reference (rltrain/engine/ema.py).

Under DeepSpeed the critic is a ZeRO engine like the actor, checkpointed as shards in the
checkpoint's ``critic/`` folder.

Deliberate departures:
- The π_old log-probs come from the training forward, not the sampler, so the first minibatch's
  ratio is 1 up to kernel differences; the sampler's own log-probs (rltrain's engine or, with
  ``rollout.engine=vllm``, vLLM's: docs/vllm.md) feed only the rollout↔trainer mismatch metrics.
- ReaLHF's early stop zeroes a minibatch; here each micro-batch decides on its own mean ratio
  (identical when a minibatch is one micro-batch).
- Advantage whitening uses (A − μ)·rsqrt(σ² + 1e-8) with the population variance; ReaLHF divides
  by σ + 1e-5.
- The critic starts from a copy of the policy backbone with a zero value head unless
  ``algo.critic_path`` names another model (ReaLHF starts from the reward model).
"""
from __future__ import annotations

import time

import torch

from rltrain.algos import core
from rltrain.algos.ppo import AdaptiveKLController, FixedKLController, RunningValueNorm, gae, token_rewards, value_loss
from rltrain.config import RunConfig
from rltrain.engine.critic import save_critic
from rltrain.engine.dist import Dist
from rltrain.engine.ema import ema_reference
from rltrain.loops import episodes, lifecycle, setup
from rltrain.rollout import forward
from rltrain.loops.lifecycle import Metrics
from rltrain.loops.pg import PGBatch, PolicyUpdate
from rltrain.report.samples import rollout_rows


# --------------------------------------------------------------------------- setup


def build_context(cfg: RunConfig, dist: Dist) -> tuple[setup.Context, PPOState]:
    """The shared context (actor, critic, the reference when β > 0, prompts) and PPO's own state."""
    t = cfg.train
    ctx = setup.Context(cfg, dist, total_optimizer_steps=t.total_optimizer_steps,
                        with_reference=cfg.algo.kl_coef > 0, with_critic=True)
    return ctx, PPOState(cfg, ctx, dist)


class PPOState:
    """What PPO keeps besides the shared context: trick 3's moving reference, the value normaliser,
    the KL controller and the policy update; ``engines`` are checkpointed like the actor."""

    def __init__(self, cfg: RunConfig, ctx: setup.Context, dist: Dist):
        a = cfg.algo
        # Trick 3's fp32 reference weights (the reference module holds them in the compute dtype).
        self.moving_ref = (ema_reference(ctx.ref, ctx.actor, stage=cfg.deepspeed.stage, rank=dist.rank,
                                         world_size=dist.world_size) if ctx.ref is not None and a.ref_ema > 0
                           else None)
        self.value_norm = RunningValueNorm() if a.value_norm else None
        self.kl_ctl = (AdaptiveKLController(a.kl_coef, a.kl_target, a.kl_horizon) if a.adaptive_kl
                       else FixedKLController(a.kl_coef))
        self.update = PolicyUpdate(cfg, early_stop_ratio=a.early_stop_ratio)
        # Trained state checkpointed like the actor (trainer.pt entry + per-rank shards).
        self.engines = {"critic": ctx.critic, **({"reference": self.moving_ref} if self.moving_ref is not None else {})}

    def state_dict(self) -> dict:
        """What a checkpoint needs beyond the actor and ``engines``."""
        return {"kl_coef": self.kl_ctl.value, "value_norm": self.value_norm.state_dict() if self.value_norm else None}

    def load_state_dict(self, state: dict) -> None:
        self.kl_ctl.value = state["kl_coef"]
        if self.value_norm is not None:
            self.value_norm.load_state_dict(state["value_norm"])


# --------------------------------------------------------------------------- pieces of a step


def critic_values(critic, prompt_ids, response_ids, *, pad_id: int) -> torch.Tensor:
    """``[B, T + 1]``: V(s_0) … V(s_T) for responses ``[B, T]`` (see rltrain/engine/critic.py)."""
    ids, attn, pos = forward.pack(prompt_ids, response_ids, pad_id)
    return critic(ids, attn, pos, values_to_keep=response_ids.shape[1] + 1)


@torch.no_grad()
def batched_critic_values(critic, prompt_ids, response_ids, *, pad_id: int, micro_batch_size: int):
    return torch.cat([critic_values(critic, prompt_ids[s:s + micro_batch_size], response_ids[s:s + micro_batch_size],
                                    pad_id=pad_id) for s in range(0, len(prompt_ids), micro_batch_size)])


def whiten_advantages(adv: torch.Tensor, mask: torch.Tensor, scope: str, minibatches: int, dist: Dist):
    """Trick 1: (A − μ)/σ over the step's batch (or each minibatch), statistics across ranks."""
    groups = [torch.arange(adv.shape[0])] if scope == "batch" else \
        [torch.arange(k, adv.shape[0], minibatches) for k in range(minibatches)]  # pg.py's interleaving
    out = torch.zeros_like(adv)
    for rows in groups:
        moments = dist.sum(core.masked_moments(adv[rows], mask[rows]))
        out[rows] = core.masked_whiten(adv[rows], mask[rows], unbiased=False, moments=moments)
    return out


def batch_mean(x: torch.Tensor, mask: torch.Tensor, dist: Dist) -> float:
    """Mean over the valid tokens of every rank's batch (a rank's own mean would depend on the rank count)."""
    mo = dist.sum(core.masked_moments(x, mask))
    return (mo[1] / mo[0]).item() if mo[0] > 0 else 0.0


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, dist: Dist) -> float:
    """1 − Var(R − V) / Var(R) over the batch's valid tokens (all ranks)."""
    err = dist.sum(core.masked_moments(returns - values, mask))
    ret = dist.sum(core.masked_moments(returns, mask))
    var = lambda mo: (mo[2] / mo[0] - (mo[1] / mo[0]) ** 2).item() if mo[0] > 0 else 0.0  # noqa: E731
    return 1.0 - var(err) / var(ret) if var(ret) > 1e-8 else 0.0  # constant returns: nothing to explain


def critic_update(ctx: setup.Context, cfg: RunConfig, dist: Dist, prompt_ids, response_ids, mask, old_values, targets,
                  step: int) -> dict:
    """``epochs`` × ``minibatches_per_step`` critic optimizer steps (the actor's minibatches)."""
    t, a, pad = cfg.train, cfg.algo, ctx.tok.pad_token_id
    N, M = response_ids.shape[0], t.minibatches_per_step
    m = Metrics()
    for _epoch in range(t.epochs):
        for k in range(M):
            rows = torch.arange(k, N, M)
            n_tok = dist.sum(core.aggregate_counts(mask[rows].bool()))[0]
            for mb in lifecycle.chunks(len(rows), t.micro_batch_size):
                idx = rows[list(mb)]
                v = critic_values(ctx.critic.module, [prompt_ids[i] for i in idx.tolist()], response_ids[idx],
                                  pad_id=pad)[:, :-1]  # [b, T]
                loss_mat = value_loss(v, old_values[idx], targets[idx], mask[idx],
                                      clip=a.value_clip if a.value_clip > 0 else None, loss_type=a.value_loss)
                loss = core.aggregate(loss_mat, mask[idx], "token-mean", num_tokens=n_tok)
                lifecycle.finite_or_raise(loss, step)
                ctx.critic.backward(loss)
                w = float(mask[idx].sum())
                m.add("critic/value_loss", core.masked_mean(loss_mat.detach(), mask[idx]).item(), w)
            m.add("critic/grad_norm", ctx.critic.step())
    out = m.reduce(dist)
    out["critic/lr"] = ctx.critic.lr
    return out


# --------------------------------------------------------------------------- the loop


def ppo_step(ctx: setup.Context, st: PPOState, cfg: RunConfig, dist: Dist, step: int,
             samples: list | None = None) -> dict:
    """One PPO step (the module docstring's 1-8); returns its metrics. ``samples``: the first
    rollouts with their advantages are appended to it as samples.jsonl rows."""
    a, t = cfg.algo, cfg.train
    pad, temp, n = ctx.tok.pad_token_id, cfg.rollout.scoring_temperature, t.samples_per_prompt
    idx, first = episodes.rank_slice(ctx.order, step, t.prompts_per_step, dist)
    with setup.rollout_gathered(ctx):  # ZeRO-3: the actor's parameters gathered once for the rollout
        s, times = episodes.rollout_and_score(ctx.actor.module, ctx.tok, [ctx.train[i] for i in idx],
                                       [ctx.train_ids[i] for i in idx], ctx.reward, cfg, n=n,
                                       generator=episodes.rollout_generator(cfg.seed, step), first_prompt_index=first,
                                       sampler=ctx.sampler)  # rollout.engine=vllm: the engine's pushed weights
    episodes.gdpo(s, ctx.reward, cfg, n)  # reward.normalize=then_sum
    batch_sum = episodes.gdpo_batch_scores(s, cfg, dist)  # reward.sum_normalize=batch: the sum over the batch
    scores = s.scores if batch_sum is None else batch_sum  # [N] what enters the token rewards
    mask, T = s.mask, s.response_ids.shape[1]
    mb = t.micro_batch_size

    t0 = time.time()
    old_logp, old_ent = forward.batched_logprobs(ctx.actor.module, s.prompt_ids, s.response_ids, pad_id=pad,
                                           temperature=temp, micro_batch_size=mb, with_entropy=True)  # [N, T]
    ref_logp = None
    if ctx.ref is not None:
        ref_logp, _ = forward.batched_logprobs(ctx.ref, s.prompt_ids, s.response_ids, pad_id=pad, temperature=temp,
                                         micro_batch_size=mb)
    raw_values = batched_critic_values(ctx.critic.module, s.prompt_ids, s.response_ids, pad_id=pad,
                                       micro_batch_size=mb)  # [N, T + 1], the critic's (normalised) space
    values = st.value_norm.denormalize(raw_values) if st.value_norm else raw_values
    times["time/reference"] = time.time() - t0

    # Token rewards, GAE, advantage whitening.
    kl = core.kl_estimate(old_logp, ref_logp, "k1") if ref_logp is not None else torch.zeros_like(old_logp)
    beta = st.kl_ctl.value if a.kl_in_reward else 0.0
    finished = torch.ones_like(s.finished) if a.score_truncated else s.finished  # [N] bool
    rewards = token_rewards(scores, kl, mask, finished, kl_coef=beta, score_clip=a.max_reward_clip)  # [N, T]
    bootstrap = values.gather(1, s.lengths[:, None].long()).squeeze(1)  # [N] V(s_L), for truncated rows
    adv, returns = gae(rewards, values[:, :T], mask, gamma=a.gamma, lam=a.lam, finished=finished,
                       bootstrap_values=bootstrap)
    metrics = {"critic/explained_var": explained_variance(values[:, :T], returns, mask, dist),
               "critic/values_mean": batch_mean(values[:, :T], mask, dist),
               "critic/returns_mean": batch_mean(returns, mask, dist)}
    if a.adv_norm:
        adv = whiten_advantages(adv, mask, a.adv_norm_scope, t.minibatches_per_step, dist)
    if samples is not None:
        samples += rollout_rows(s, adv, limit=cfg.log.samples_per_step)
    if st.value_norm is not None:
        st.value_norm.update_from_moments(dist.sum(core.masked_moments(returns, mask)))
        targets = st.value_norm.normalize(returns)
    else:
        targets = returns

    # Actor (after the critic warm-up), critic, reference EMA, KL controller.
    if step >= a.critic_warmup_steps:
        batch = PGBatch(s.prompt_ids, s.response_ids, mask, adv, None if a.kl_in_reward else ref_logp,
                        old_logp=old_logp, old_entropy=old_ent, rollout_logp=s.logprobs)
        metrics.update(st.update.run(ctx.actor, batch, dist, pad_id=pad, step=step,
                                     generator=episodes.update_generator(cfg.seed, step)))
        if st.moving_ref is not None:  # trick 3
            st.moving_ref.update(ctx.actor, a.ref_ema)
        setup.push_weights(ctx, metrics)  # rollout.engine=vllm: the next rollout samples with the updated weights
    t1 = time.time()
    metrics.update(critic_update(ctx, cfg, dist, s.prompt_ids, s.response_ids, mask, raw_values[:, :T], targets, step))
    times["time/critic"] = time.time() - t1
    seq_kl = dist.sum(torch.tensor([float(core.masked_sum(kl, mask)), float(len(s.completions))], dtype=torch.float64))
    metrics["kl/ref_seq"] = seq_kl[0].item() / seq_kl[1].item()  # Σ_t k1 per sequence, batch mean
    metrics["kl/coef"] = st.kl_ctl.value
    st.kl_ctl.update(metrics["kl/ref_seq"], int(seq_kl[1].item()))
    metrics.update(episodes.rollout_metrics(s, times, dist))
    metrics.update(times)
    return metrics


def train(cfg: RunConfig, dist: Dist) -> dict:
    torch.manual_seed(cfg.seed)
    ctx, st = build_context(cfg, dist)
    ts, logger, before, clock = lifecycle.start(cfg, ctx, dist, "rltrain ppo", engines=st.engines)
    if ts.step:
        st.load_state_dict(ts.loop)
    for step in clock.steps():
        t0 = time.time()
        rows = [] if logger else None
        # step 1: rollout, token rewards, GAE, actor and critic updates (``ppo_step``: the module docstring's 1-8)
        metrics = ppo_step(ctx, st, cfg, dist, step, samples=rows)
        metrics["time/step"] = time.time() - t0
        # step 2: samples, the loop's state, evaluation, logging, checkpoint
        if logger:
            logger.samples(step + 1, "train", rows)
        ts.loop = st.state_dict()  # the KL coefficient and value normaliser after this step
        if lifecycle.end_step(cfg, ctx, dist, clock, step + 1, metrics, logger=logger,
                      save=lambda: lifecycle.save(cfg, dist, ts, ctx.actor, ctx.tok, engines=st.engines)):
            break
    critic_sd = ctx.critic.full_state_dict()  # collective under ZeRO-3
    if dist.is_main:  # usable as algo.critic_path of a later run
        save_critic(ctx.critic.module, f"{cfg.run_dir}/critic", state_dict=critic_sd)
    return lifecycle.final_eval(cfg, ctx, dist, logger, before, step=clock.step)
