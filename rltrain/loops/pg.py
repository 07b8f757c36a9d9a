"""The policy-gradient update shared by GRPO, SPO and PPO's actor: given sequences, per-token
advantages and (optionally) reference log-probs, run ``epochs`` × ``minibatches_per_step``
optimizer steps with micro-batching, token selection and the configured policy loss.

The three separate steps of STYLE.md are visible here: per-token loss (``policy_loss``
registry), token mask (``token_selection`` registry), aggregation (``core.aggregate`` with the
step's global token/sequence counts, so micro-batch size and rank count do not change the loss).

Batch-wide quantities (the high-entropy threshold, the covariance pools of Clip-Cov/KL-Cov, the
aggregation denominators) are reduced across ranks before any gradient is taken. When the update
is a single on-policy pass (one minibatch, one epoch) and nothing batch-wide needs the current
policy's statistics up front, no separate "old log-prob" forward is run: π_old = π_θ detached.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from rltrain.algos import core, registry
from rltrain.config import RunConfig
from rltrain.engine.dist import Dist
from rltrain.loops.common import (batched_logprobs, chunks, entropy_stats, finite_or_raise, lockstep, option_kwargs,
                                  response_logprobs)

log = logging.getLogger(__name__)


@dataclass
class PGBatch:
    """One rank's training sequences for a step."""

    prompt_ids: list[list[int]]
    response_ids: torch.Tensor  # [N, T]
    mask: torch.Tensor  # [N, T] float, valid response tokens
    advantages: torch.Tensor  # [N, T]
    ref_logp: torch.Tensor | None = None  # [N, T], only when algo.kl_coef > 0 (KL loss)
    old_logp: torch.Tensor | None = None  # [N, T] π_old, when the caller already computed it (PPO)
    old_entropy: torch.Tensor | None = None  # [N, T], with old_logp
    rollout_entropy: torch.Tensor | None = None  # [N, T] entropy at sampling time (for logging)


class Metrics:
    """Token-weighted metric sums, reduced across ranks at the end of a step."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, name: str, value: float, weight: float = 1.0) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value) * weight
        self.weights[name] = self.weights.get(name, 0.0) + weight

    def reduce(self, dist: Dist) -> dict[str, float]:
        names = sorted(self.sums)
        t = torch.tensor([[self.sums[n], self.weights[n]] for n in names], dtype=torch.float64)
        t = dist.sum(t) if len(names) else t
        return {n: (t[i, 0] / t[i, 1]).item() if t[i, 1] > 0 else 0.0 for i, n in enumerate(names)}


def needs_old_pass(cfg: RunConfig) -> bool:
    """Whether the update needs log-probs (and entropies) of the whole batch before training."""
    sel = registry.get("token_selection", cfg.token_selection.name)
    loss = registry.get("policy_loss", cfg.policy_loss.name)
    off_policy = cfg.train.minibatches_per_step > 1 or cfg.train.epochs > 1
    return (off_policy or bool(sel.requires) or sel.needs_pool(option_kwargs(cfg.token_selection))
            or loss.needs_pool(option_kwargs(cfg.policy_loss)))


def skippable_rows(cfg: RunConfig, batch: PGBatch, mask: torch.Tensor, early_stop_ratio: float) -> torch.Tensor:
    """bool ``[N]``: rows whose loss and gradient are exactly zero, so the update need not run them.

    A row qualifies when all its advantages are 0 (a GRPO group with equal rewards: on a hard
    task most groups at the start) and nothing else in the loss depends on it: the policy loss
    vanishes with A = 0 and selects nothing per micro-batch, there is no KL loss, no entropy
    bonus, and no micro-batch-level early stop. Skipping then changes no gradient, only which
    rows share a micro-batch.
    """
    spec = registry.get("policy_loss", cfg.policy_loss.name)
    opts = option_kwargs(cfg.policy_loss)
    exact = (spec.zero_without_advantage and (spec.select is None or spec.needs_pool(opts))
             and batch.ref_logp is None and cfg.algo.entropy_coef == 0 and early_stop_ratio <= 0)
    if not exact:
        return torch.zeros(mask.shape[0], dtype=torch.bool)
    return ~((batch.advantages != 0) & mask).any(dim=1)


def micro_batches(rows: torch.Tensor, skip: torch.Tensor, size: int, dist: Dist, in_step: bool) -> list:
    """This rank's micro-batches of minibatch ``rows``: ``(row indices, weight)`` with weight 0
    for a stand-in.

    Skipped rows are left out. At least one micro-batch always runs (a stand-in row whose loss is
    multiplied by 0 when nothing is left) so that every parameter gets a gradient, zero or not,
    and the optimizer step is the same as without skipping. ``in_step`` (DeepSpeed with several
    ranks, whose forward and backward are collective under ZeRO-3): every rank runs as many
    micro-batches as the busiest one, padding with stand-ins.
    """
    keep = rows[~skip[rows]]
    out = [(keep[list(mb)], 1.0) for mb in chunks(len(keep), size)]
    want = max(1, len(out))
    if in_step:
        want = int(dist.max(torch.tensor([float(want)])).item())
    stand_in = rows[:1] if len(rows) else torch.zeros(1, dtype=torch.long)  # row 0: a minibatch this rank has no row of
    out += [(stand_in, 0.0)] * (want - len(out))
    return out


def _my_slice(row: torch.Tensor, mask: torch.Tensor, dist: Dist) -> torch.Tensor:
    """This rank's part of a pooled selection row [1, N_global] as [B, T] (rank order pools)."""
    n_local = int(mask.sum())
    counts = dist.gather_cat(torch.tensor([n_local], dtype=torch.long))
    offset = int(counts[: dist.rank].sum())
    return core.unflatten_valid(row[0, offset:offset + n_local], mask, fill=False)


def select_tokens(cfg: RunConfig, mask, old_logp, old_ent, dist: Dist):
    """The step's TokenSelection (batch-wide threshold pooled across ranks when configured)."""
    spec = registry.get("token_selection", cfg.token_selection.name)
    opts = option_kwargs(cfg.token_selection)
    if spec.needs_pool(opts):
        pool = dist.gather_cat(core.flatten_valid(old_ent, mask))  # [N_global]
        ones = torch.ones(1, pool.numel(), dtype=torch.bool)
        row = spec.select(ones, entropy=pool[None], **opts)  # [1, N_global]
        return spec(mask, selected=_my_slice(row, mask, dist), **opts)
    return spec(mask, entropy=old_ent, old_logp=old_logp, **opts)


_warned: set[str] = set()


def _warn_small_selection(cfg: RunConfig, n_tokens: int) -> None:
    """Once per run: Clip-Cov / KL-Cov select ``max(⌊ratio·N⌋, 1)`` tokens, and the papers' ratios
    (2e-4) are meant for ~10⁶ tokens per step; at CPU-sized batches that is one token."""
    ratio = getattr(cfg.policy_loss, "select_ratio", None)
    if ratio is None or ratio * n_tokens >= 10 or cfg.policy_loss.name in _warned:
        return
    _warned.add(cfg.policy_loss.name)
    log.warning("policy_loss=%s: select_ratio=%g of this step's %d response tokens selects %d token(s); the "
                "method acts on a handful of tokens at this batch size (raise policy_loss.select_ratio or the batch)",
                cfg.policy_loss.name, ratio, n_tokens, max(int(ratio * n_tokens), 1))


def select_for_loss(cfg: RunConfig, mask, old_logp, advantages, dist: Dist, generator):
    """Batch-wide selection of a covariance-based policy loss, or None (π_θ = π_old at step start)."""
    spec = registry.get("policy_loss", cfg.policy_loss.name)
    opts = option_kwargs(cfg.policy_loss)
    if not spec.needs_pool(opts):
        return None
    lp = dist.gather_cat(core.flatten_valid(old_logp, mask))[None]  # [1, N_global]
    adv = dist.gather_cat(core.flatten_valid(advantages.float(), mask))[None]
    _warn_small_selection(cfg, lp.shape[1])
    row = spec.select(lp, lp, adv, torch.ones_like(lp, dtype=torch.bool), generator=generator, **opts)
    return _my_slice(row, mask, dist)


def policy_update(actor, batch: PGBatch, cfg: RunConfig, dist: Dist, *, pad_id: int, step: int,
                  generator: torch.Generator, world_scale: float = 1.0, early_stop_ratio: float = 0.0) -> dict:
    """Train the actor on one step's batch; returns metrics (reduced across ranks).

    ``early_stop_ratio`` > 0: a micro-batch whose mean importance ratio exceeds it contributes no
    gradient (its loss × 0; ReaLHF's ``early_stop_imp_ratio``)."""
    t0 = time.time()
    T_ = cfg.train
    temp = cfg.rollout.temperature or 1.0
    N = batch.response_ids.shape[0]
    mask = batch.mask.bool()
    loss_fn = registry.get("policy_loss", cfg.policy_loss.name)
    loss_opts = option_kwargs(cfg.policy_loss)
    constant = cfg.algo.loss_agg_constant or float(cfg.rollout.max_new_tokens)

    old_logp, old_ent = batch.old_logp, batch.old_entropy
    if old_logp is None and needs_old_pass(cfg):
        old_logp, old_ent = batched_logprobs(actor.module, batch.prompt_ids, batch.response_ids, pad_id=pad_id,
                                             temperature=temp, micro_batch_size=T_.micro_batch_size,
                                             with_entropy=True, dist=lockstep(cfg, dist))
    # Token selection and covariance selection are fixed for the step, pooled across ranks.
    selection = select_tokens(cfg, mask, old_logp, old_ent, dist)
    loss_selected = select_for_loss(cfg, mask, old_logp, batch.advantages, dist, generator)
    select, count_mask = selection.loss_mask, selection.count_mask

    m = Metrics()
    m.add("actor/token_select_frac", (select.sum() / mask.sum().clamp(min=1)).item(), mask.sum().item())
    skip = skippable_rows(cfg, batch, mask, early_stop_ratio)
    in_step = lockstep(cfg, dist) is not None
    m.add("actor/skipped_rows_frac", float(skip.float().mean()) if N else 0.0, float(N))
    # Entropy for logging: the rollout's (all rows, no extra work) unless the update computes it.
    log_ent = old_ent if old_ent is not None else batch.rollout_entropy
    all_ent = []
    M = T_.minibatches_per_step
    for _epoch in range(T_.epochs):
        for k in range(M):
            rows = torch.arange(k, N, M)  # interleaved: the same global minibatch for any rank count
            counts = dist.sum(core.aggregate_counts(count_mask[rows]))
            kl_counts = dist.sum(core.aggregate_counts(mask[rows])) if batch.ref_logp is not None else None
            skipped_tokens = mask[rows][skip[rows]].sum().item()
            if skipped_tokens:  # their loss is exactly 0: keep the logged mean over all tokens
                m.add("actor/pg_loss", 0.0, skipped_tokens)
            for idx, weight in micro_batches(rows, skip, T_.micro_batch_size, dist, in_step):
                width = max(1, int(mask[idx].sum(1).max()))  # this micro-batch's longest response
                p_ids = [batch.prompt_ids[i] for i in idx.tolist()]
                want_ent_grad = cfg.algo.entropy_coef != 0
                ent_mode = True if want_ent_grad else ("detached" if log_ent is None and _epoch == 0 else False)
                logp, ent = response_logprobs(actor.module, p_ids, batch.response_ids[idx, :width], pad_id=pad_id,
                                              temperature=temp, with_entropy=ent_mode)
                mk, sel, adv = mask[idx, :width], select[idx, :width], batch.advantages[idx, :width]
                old = old_logp[idx, :width] if old_logp is not None else logp.detach()
                extra = {} if loss_selected is None else {"selected": loss_selected[idx, :width]}
                loss_mat, lm = loss_fn(logp, old, adv, mk, generator=generator, **extra, **loss_opts)
                loss_mat = loss_mat.masked_fill(~sel, 0.0)  # unselected tokens: no gradient
                loss = core.aggregate(loss_mat, count_mask[idx, :width], cfg.algo.loss_agg_mode, constant,
                                      num_tokens=counts[0], num_seqs=counts[1])
                if batch.ref_logp is not None:
                    kl_mat = core.kl_estimate(logp, batch.ref_logp[idx, :width], cfg.algo.kl_estimator)
                    kl = core.aggregate(kl_mat, mk, cfg.algo.loss_agg_mode, constant,
                                        num_tokens=kl_counts[0], num_seqs=kl_counts[1])
                    loss = loss + cfg.algo.kl_coef * kl
                    m.add("actor/kl", core.masked_mean(kl_mat.detach(), mk).item(), mk.sum().item())
                if want_ent_grad:
                    loss = loss - cfg.algo.entropy_coef * core.aggregate(
                        ent, mk, cfg.algo.loss_agg_mode, constant, num_tokens=counts[0], num_seqs=counts[1])
                if early_stop_ratio > 0:
                    stop = float(lm["ratio_mean"]) > early_stop_ratio
                    m.add("actor/early_stopped", float(stop), 1.0)
                    loss = loss * 0.0 if stop else loss
                finite_or_raise(loss, step)
                if weight == 0.0:  # a stand-in: zero gradient; its metrics get weight 0 (but every
                    actor.backward(loss * 0.0)  # rank must log the same names: they are reduced together)
                    for name in ["actor/pg_loss", *(f"actor/{k}" for k in lm)]:
                        m.add(name, 0.0, 0.0)
                    if ent is not None and _epoch == 0:  # entropy_stats is collective too
                        all_ent.append((ent.detach(), torch.zeros_like(mk)))
                    continue
                actor.backward(loss * world_scale)
                ntok = mk.sum().item()
                m.add("actor/pg_loss", loss.item() * counts[0].item() / max(ntok, 1), ntok)
                for name, v in lm.items():
                    m.add(f"actor/{name}", float(v), ntok)
                if ent is not None and _epoch == 0:
                    all_ent.append((ent.detach(), mk))
            gn = actor.step()
            m.add("actor/grad_norm", gn)
    out = m.reduce(dist)
    out["actor/pg_loss"] = out.get("actor/pg_loss", 0.0)
    if log_ent is not None:
        out.update(entropy_stats(log_ent, mask, dist))
    elif all_ent:
        e = torch.cat([torch.nn.functional.pad(x, (0, batch.response_ids.shape[1] - x.shape[1])) for x, _ in all_ent])
        mm = torch.cat([torch.nn.functional.pad(y, (0, batch.response_ids.shape[1] - y.shape[1])) for _, y in all_ent])
        out.update(entropy_stats(e, mm, dist))
    out["actor/lr"] = actor.lr
    out["time/update"] = time.time() - t0
    return out

