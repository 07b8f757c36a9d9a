"""Covariance-based entropy control: Clip-Cov and KL-Cov policy losses (docs/algorithms.md §6).

Paper: Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language
Models" (arXiv 2505.22617); behaviour as in PRIME-RL/Entropy-Mechanism-of-RL and verl's
``compute_policy_loss_clip_cov`` / ``compute_policy_loss_kl_cov``.

Per-token covariance over the pool of N valid tokens (log-probs detached):
    Cov_i = (A_i − mean A) · (log π_θ(y_i) − mean log π_θ)

Clip-Cov (defaults r = 2e-4, ω_low = 1, ω_high = 5; the official scripts clip the ratio to
[0, 2], i.e. clip_low = clip_high = 1):
    1. L1 = −A·ρ, L2 = −A·clip(ρ, 1−clip_low, 1+clip_high); tokens with L2 > L1 (already clipped by
       PPO) are not candidates.
    2. candidates: ω_low < Cov_i < ω_high.
    3. draw n = max(⌊r·N⌋, 1) candidates uniformly at random (all of them if fewer).
    4. their loss max(L1, L2) is multiplied by 0: no gradient, but they stay in the denominator.
    Every other token keeps the clipped-PPO loss max(L1, L2).
KL-Cov (verl: ratio k = 2e-4 as a FRACTION, decision 7 in docs/algorithms.md; β = 1):
    the top k = max(1, ⌊N·ratio⌋) tokens by Cov get L = −A·ρ + β·|log π_θ − log π_old| (a penalty
    towards the *rollout* policy, not the reference); all others get −A·ρ, UNCLIPPED.

Selection protocol (decision 7 in docs/algorithms.md: over the whole step's batch across ranks by default; the
official per-micro-batch selection as an option). Each loss takes ``selected``:
- ``selected=None``: the selection is computed from this call's tensors (per-micro-batch,
  official behaviour; Clip-Cov then needs ``generator``).
- ``selected=bool [B, T]``: a precomputed selection. For batch scope the loop builds it as
  follows, once per optimizer step, *before* the micro-batch backward passes:
    1. for every micro-batch, with the current policy (a no-grad forward is enough; the
       selection uses detached values): ``core.flatten_valid`` of ``logp``, ``old_logp`` and
       ``advantages`` — each ``[n_mb]``;
    2. concatenate over micro-batches in order, all-gather over ranks in rank order →
       pool tensors ``[N]`` (identical on every rank);
    3. ``sel = clip_cov_select(pool_logp[None], pool_old[None], pool_adv[None], ones[1, N], ...,
       generator=g)`` or ``kl_cov_select(pool_logp[None], pool_adv[None], ones[1, N], ...)``
       — the pool's means, N, k/n and the random draw are batch-wide. For Clip-Cov, ``g`` must
       produce the same draw on every rank: a CPU ``torch.Generator`` seeded with the same value
       on all ranks (e.g. seed + step), or compute on rank 0 and broadcast;
    4. each micro-batch takes its slice of ``sel[0]`` (offset = tokens of earlier ranks and
       earlier micro-batches) and passes ``core.unflatten_valid(slice, mask)`` as ``selected``.
  In one process with one micro-batch the local tensors are the pool and this equals
  ``selected=None``.

Deviations: ρ uses log-ratios clamped to ±20 (overflow guard, as ``ppo.clipped_surrogate``);
ties in KL-Cov's top-k are broken by pool position (``core.masked_topk``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from rltrain.algos.core import _bool, _ratio_count, masked_mean, masked_topk
from rltrain.algos.ppo import clip_fraction, importance_ratio, ratio_metrics, surrogate_terms
from rltrain.algos.registry import SCOPES, check_scope, check_selected, register_policy_loss, selected_frac


def _zero(x: Tensor) -> Tensor:
    return torch.zeros((), dtype=x.dtype, device=x.device)


def select_count(n: int, ratio: float) -> int:
    """max(⌊ratio·n⌋, 1) for n > 0 (0 for an empty pool): Clip-Cov's n and KL-Cov's k."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"selection ratio must be in (0, 1], got {ratio}")
    return 0 if n == 0 else max(_ratio_count(ratio, n, "floor"), 1)


def token_covariance(logp: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """Cov_i = (A_i − Ā)(logp_i − mean logp) over the valid tokens of the call; detached, 0 on
    padding. ``[B, T]``."""
    m = _bool(mask)
    lp = logp.detach()
    adv = advantages.detach().to(lp.dtype)
    cov = (adv - masked_mean(adv, m)) * (lp - masked_mean(lp, m))  # [B, T]
    return torch.where(m, cov, _zero(cov))


def clip_cov_select(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    cov_low: float,
    cov_high: float,
    select_ratio: float,
    generator: torch.Generator,
) -> Tensor:
    """Clip-Cov's randomly drawn tokens, bool ``[B, T]`` (exactly min(n, #candidates) of them).

    Args:
        logp, old_logp, advantages, mask: ``[B, T]`` (or the pool as ``[1, N]``).
        clip_low, clip_high: the PPO clip range (tokens clipped by it are excluded).
        cov_low, cov_high: ω_low < Cov < ω_high.
        select_ratio: r; n = max(⌊r·N⌋, 1).
        generator: the random source; candidates are enumerated in row-major order and a
            ``randperm`` of them (on the generator's device) picks the first n.
    """
    m = _bool(mask)
    with torch.no_grad():
        adv = torch.where(m, advantages, _zero(advantages))
        ratio = importance_ratio(logp.detach(), old_logp, m)  # [B, T]
        unclipped, clipped_term = surrogate_terms(ratio, adv, clip_low=clip_low, clip_high=clip_high)
        clipped = clipped_term > unclipped
        cov = token_covariance(logp, adv, m)  # [B, T]
        candidates = m & ~clipped & (cov > cov_low) & (cov < cov_high)  # [B, T]
        n = select_count(int(m.sum()), select_ratio)
        idx = torch.nonzero(candidates.reshape(-1)).squeeze(-1)  # [n_cand]
        if idx.numel() > 0:
            perm = torch.randperm(idx.numel(), generator=generator, device=generator.device)
            idx = idx[perm[:n].to(idx.device)]
        chosen = torch.zeros(m.numel(), dtype=torch.bool, device=m.device)
        chosen[idx] = True
        return chosen.reshape(m.shape)


def kl_cov_select(logp: Tensor, advantages: Tensor, mask: Tensor, *, select_ratio: float) -> Tensor:
    """KL-Cov's top-k tokens by covariance, bool ``[B, T]`` (exactly k = max(1, ⌊N·ratio⌋))."""
    m = _bool(mask)
    cov = token_covariance(logp, advantages, m)
    return masked_topk(cov, m, select_count(int(m.sum()), select_ratio))


def clip_cov_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    cov_low: float,
    cov_high: float,
    select_ratio: float,
    generator: torch.Generator | None = None,
    selected: Tensor | None = None,
) -> Tensor:
    """Clip-Cov per-token loss ``[B, T]``: clipped PPO, with the selected tokens' loss × 0.

    Args:
        logp: ``[B, T]`` log π_θ (with grad); old_logp, advantages, mask: ``[B, T]``.
        clip_low, clip_high, cov_low, cov_high, select_ratio: see the module docstring.
        generator: required when ``selected`` is None.
        selected: bool ``[B, T]`` precomputed (batch-wide) selection; None = select locally.

    Returns:
        ``[B, T]`` per-token loss, 0 on padding and on selected tokens.
    """
    m = _bool(mask)
    if selected is None:
        if generator is None:
            raise ValueError("clip_cov_loss: pass `generator` (or a precomputed `selected`)")
        selected = clip_cov_select(
            logp, old_logp, advantages, m, clip_low=clip_low, clip_high=clip_high,
            cov_low=cov_low, cov_high=cov_high, select_ratio=select_ratio, generator=generator,
        )
    adv = torch.where(m, advantages, _zero(advantages))  # [B, T]
    ratio = importance_ratio(logp, old_logp, m)  # [B, T]
    loss = torch.maximum(*surrogate_terms(ratio, adv, clip_low=clip_low, clip_high=clip_high))
    loss = loss * (~_bool(selected)).to(loss.dtype)  # the "detach": value and gradient 0
    return torch.where(m, loss, _zero(loss))


def kl_cov_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    select_ratio: float,
    kl_coef: float,
    selected: Tensor | None = None,
) -> Tensor:
    """KL-Cov per-token loss ``[B, T]``: −A·ρ, plus β·|logp − old_logp| on the selected tokens.

    Args:
        logp: ``[B, T]`` log π_θ (with grad); old_logp, advantages, mask: ``[B, T]``.
        select_ratio: k = max(1, ⌊N·select_ratio⌋), a fraction (2e-4 = 0.02%).
        kl_coef: β (official 1.0).
        selected: bool ``[B, T]`` precomputed (batch-wide) selection; None = top-k locally.

    Returns:
        ``[B, T]`` per-token loss, 0 on padding.
    """
    m = _bool(mask)
    if selected is None:
        selected = kl_cov_select(logp, advantages, m, select_ratio=select_ratio)
    adv = torch.where(m, advantages, _zero(advantages))
    log_ratio = torch.where(m, logp - old_logp, _zero(logp))  # [B, T]
    ratio = importance_ratio(logp, old_logp, m)
    penalty = kl_coef * log_ratio.abs()
    loss = -adv * ratio + torch.where(_bool(selected), penalty, _zero(penalty))
    return torch.where(m, loss, _zero(loss))


# --------------------------------------------------------------------------- the registered losses


def clip_cov_pool_select(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, clip_low: float,
                         clip_high: float, cov_low: float, cov_high: float, select_ratio: float, scope: str,
                         generator: torch.Generator | None = None) -> Tensor:
    """``clip_cov_select`` with the Clip-Cov options (the entry's ``select``)."""
    check_scope(scope)
    if generator is None:
        raise ValueError("clip_cov selection needs `generator`")
    return clip_cov_select(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high, cov_low=cov_low,
                           cov_high=cov_high, select_ratio=select_ratio, generator=generator)


def kl_cov_pool_select(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, select_ratio: float,
                       kl_coef: float, scope: str, generator: torch.Generator | None = None) -> Tensor:
    """``kl_cov_select`` with the KL-Cov options (the entry's ``select``; ``kl_coef``, ``generator`` unused)."""
    check_scope(scope)
    return kl_cov_select(logp, advantages, mask, select_ratio=select_ratio)


@register_policy_loss("clip_cov", select=clip_cov_pool_select,
                      checks={"clip_low": "≥ 0", "clip_high": "≥ 0", "cov_low": "≥ 0", "cov_high": "≥ 0",
                              "select_ratio": "in (0, 1]", "scope": SCOPES})
def clip_cov_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, clip_low: float = 1.0,
                         clip_high: float = 1.0, cov_low: float = 1.0, cov_high: float = 5.0,
                         select_ratio: float = 2e-4, scope: str = "batch", selected: Tensor | None = None,
                         generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``policy_loss=clip_cov``: Clip-Cov (``clip_cov_loss``) and its metrics.

    Args:
        clip_low, clip_high: the PPO clip (the official scripts use 1, i.e. ratio in [0, 2]).
        cov_low, cov_high: ω_low < Cov < ω_high makes a token a candidate (cov_low ≤ cov_high).
        select_ratio: fraction r of tokens whose gradient is detached.
        scope: the selection pool: batch (the whole step, across ranks) | micro_batch (official code).
        selected: the batch pool's selection (``scope=batch``); generator: for ``scope=micro_batch``.
    """
    check_selected("clip_cov", scope, selected)
    if selected is None:
        if generator is None:
            raise ValueError("clip_cov with scope='micro_batch' needs `generator`")
        selected = clip_cov_select(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high,
                                   cov_low=cov_low, cov_high=cov_high, select_ratio=select_ratio, generator=generator)
    loss = clip_cov_loss(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high, cov_low=cov_low,
                         cov_high=cov_high, select_ratio=select_ratio, selected=selected)
    metrics = ratio_metrics(logp, old_logp, mask)
    metrics["clipfrac"] = clip_fraction(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high)
    metrics["selected_frac"] = selected_frac(selected, mask)
    return loss, metrics


@register_policy_loss("kl_cov", select=kl_cov_pool_select, zero_without_advantage=False,
                      checks={"select_ratio": "in (0, 1]", "kl_coef": "≥ 0", "scope": SCOPES})
def kl_cov_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
                       select_ratio: float = 2e-4, kl_coef: float = 1.0, scope: str = "batch",
                       selected: Tensor | None = None,
                       generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``policy_loss=kl_cov``: KL-Cov (``kl_cov_loss``) and its metrics.

    Args:
        select_ratio: fraction of tokens (top by covariance) that get the KL penalty (2e-4 = 0.02%).
        kl_coef: β of |log π − log π_old| on the selected tokens.
        scope: the selection pool: batch (the whole step, across ranks) | micro_batch (official code).
        selected: the batch pool's selection (``scope=batch``); generator: unused.
    """
    check_selected("kl_cov", scope, selected)
    if selected is None:
        selected = kl_cov_select(logp, advantages, mask, select_ratio=select_ratio)
    loss = kl_cov_loss(logp, old_logp, advantages, mask, select_ratio=select_ratio, kl_coef=kl_coef, selected=selected)
    metrics = ratio_metrics(logp, old_logp, mask)
    metrics["selected_frac"] = selected_frac(selected, mask)
    return loss, metrics
