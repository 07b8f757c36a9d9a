"""GRPO group advantages, DAPO dynamic sampling and overlong shaping (docs/algorithms.md §3).

Papers: Shao et al. 2024, "DeepSeekMath" (GRPO); Yu et al. 2025, "DAPO"; Liu et al. 2025,
"Understanding R1-Zero-Like Training" (Dr. GRPO). Behaviour as in verl ``core_algos.py``
(``compute_grpo_outcome_advantage``) and the DAPO recipe.

Layout: ``scores`` ``[N]`` holds ``N = num_groups · group_size`` rewards with each prompt's
responses contiguous: rows ``[g·G, (g+1)·G)`` form group g.

Decisions:
- ``std_ddof`` (decision 4 in docs/algorithms.md): 1 = ``torch.std`` (verl, default); 0 = ``np.std`` (SPO's GRPO).
- A group of size 1 uses mean 0 and std 1, as verl does (so its advantage is r/(1+eps)).
- Dr. GRPO is ``scale="none"`` (no std division) plus ``seq-mean-token-sum-norm`` aggregation.
- ``dynamic_sampling_keep`` keeps groups of size 1, as verl does (``std > 0 or len == 1``).

``algo.adv_estimator`` names an entry of ``registry.ADV_ESTIMATORS``, registered next to its function
(``@register_adv_estimator``): the entry says what the loop must give it (π_old's and the reference's
log-probs for a KL in the reward) and whether its advantages are whitened over the batch, so the loop
never compares names. Every entry has one signature:

    fn(scores [N], mask [N, T], *, group_size, kl, kl_coef, scale, eps, std_ddof) -> advantages [N, T]

and ignores the arguments it does not use (``scale``/``eps``/``std_ddof`` are GRPO's).
"""
from __future__ import annotations

import torch
from torch import Tensor

from rltrain.algos import core
from rltrain.algos.registry import register_adv_estimator

GROUP_SCALES = ("std", "none")


def _groups(scores: Tensor, group_size: int) -> Tensor:
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if scores.dim() != 1 or scores.numel() % group_size != 0:
        raise ValueError(
            f"scores must be 1-D with a length divisible by group_size={group_size}, got shape {tuple(scores.shape)}"
        )
    return scores.reshape(-1, group_size)  # [num_groups, G]


@torch.no_grad()
def group_advantages(
    scores: Tensor,
    group_size: int,
    *,
    scale: str = "std",
    eps: float = 1e-6,
    std_ddof: int = 1,
) -> Tensor:
    """GRPO outcome advantage Â_i = (r_i − mean_g r) / (std_g r + eps), or r_i − mean_g r.

    A group (G ≥ 2) whose rewards are all equal gets exactly 0 in every dtype, group size and eps.

    Args:
        scores: ``[N]`` rewards, groups contiguous.
        group_size: G, responses per prompt.
        scale: ``"std"`` (GRPO/DAPO) or ``"none"`` (Dr. GRPO).
        eps: added to the std (verl 1e-6; SPO's baseline 1e-8).
        std_ddof: 1 (unbiased, verl) or 0 (population, SPO).

    Returns:
        ``[N]`` detached advantages, one per response (broadcast to its tokens by the caller).
    """
    if scale not in GROUP_SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid: {', '.join(GROUP_SCALES)}")
    if std_ddof not in (0, 1):
        raise ValueError(f"std_ddof must be 0 or 1, got {std_ddof}")
    g = _groups(scores, group_size).to(torch.promote_types(scores.dtype, torch.float32))  # [NG, G]
    if group_size == 1:
        mean = torch.zeros_like(g)
        std = torch.ones_like(g)
    else:
        mean = g.mean(dim=1, keepdim=True)  # [NG, 1]
        std = g.std(dim=1, correction=std_ddof, keepdim=True)  # [NG, 1]
    adv = g - mean
    if scale == "std":
        adv = adv / (std + eps)
    # Decision 11 (docs/algorithms.md): a group with zero spread gets exactly 0. Its std is exactly 0 while its mean can
    # be 1 ulp off (all 0.7: g − mean = ±6e-8, then / eps = 0.06 with eps 1e-6, 5.96 with 1e-8).
    # (A group of one keeps verl's mean 0 / std 1: there is no spread to measure.)
    if group_size > 1:
        flat = (g == g[:, :1]).all(dim=1, keepdim=True)  # [NG, 1]
        adv = torch.where(flat, torch.zeros_like(adv), adv)
    return adv.reshape(-1)


@register_adv_estimator("grpo")
def grpo_token_advantages(scores: Tensor, mask: Tensor, *, group_size: int, kl: Tensor | None, kl_coef: float,
                          scale: str, eps: float, std_ddof: int) -> Tensor:
    """``group_advantages`` broadcast to every position of its response ``[N, T]`` (padding included:
    the loss masks it)."""
    return group_advantages(scores, group_size, scale=scale, eps=eps, std_ddof=std_ddof)[:, None].expand_as(
        mask).contiguous()


@torch.no_grad()
def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
    """RLOO (leave-one-out baseline): Â_i = r_i − mean_{j≠i} r_j = G/(G−1)·(r_i − mean_g r).

    Args:
        scores: ``[N]`` rewards, groups contiguous; group_size: G ≥ 2.

    Returns:
        ``[N]``; every group sums to 0, and a group with zero spread is exactly 0 (decision 11 in docs/algorithms.md).
    """
    if group_size < 2:
        raise ValueError(f"rloo needs group_size >= 2 (a leave-one-out baseline), got {group_size}")
    g = _groups(scores, group_size).to(torch.promote_types(scores.dtype, torch.float32))  # [NG, G]
    others = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)  # [NG, G] mean of the other rewards
    adv = g - others
    flat = (g == g[:, :1]).all(dim=1, keepdim=True)
    return torch.where(flat, torch.zeros_like(adv), adv).reshape(-1)


@register_adv_estimator("rloo")
def rloo_token_advantages(scores: Tensor, mask: Tensor, *, group_size: int, kl: Tensor | None, kl_coef: float,
                          scale: str, eps: float, std_ddof: int) -> Tensor:
    """``rloo_advantages`` broadcast to every position of its response ``[N, T]``."""
    return rloo_advantages(scores, group_size)[:, None].expand_as(mask).contiguous()


@torch.no_grad()
def reinforce_pp_returns(
    scores: Tensor,
    mask: Tensor,
    *,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    group_size: int | None = None,
) -> Tensor:
    """REINFORCE++ token returns (Hu 2025, docs/algorithms.md §10), before the batch whitening.

        r_t = o_i·1[t = last valid token] − β·kl_t,    G_t = Σ_{t' ≥ t} r_t'   (γ = 1)

    with o_i the outcome score, or, for REINFORCE++-baseline (``group_size`` given), the outcome
    minus its group's mean (a group with zero spread gives exactly 0, decision 11 in docs/algorithms.md). The caller
    whitens G over all valid tokens of the global batch (``core.masked_whiten`` with moments summed
    across ranks): that is the estimator's normalisation, so it is not left to the loop to forget.

    The registered REINFORCE++-baseline entry calls this without a KL: by the paper its advantage is
    the centred outcome alone and β weights a KL loss (decision 14 in docs/algorithms.md); the per-token KL
    here serves plain REINFORCE++.

    Args:
        scores: ``[N]`` outcome rewards (groups contiguous for the baseline variant).
        mask: ``[N, T]`` valid response tokens (each row's valid tokens are a prefix).
        kl: ``[N, T]`` per-token k1 KL, log π_old − log π_ref (needed when ``kl_coef`` ≠ 0).
        kl_coef: β.
        group_size: G for the baseline variant; None = plain REINFORCE++.

    Returns:
        ``[N, T]`` returns, 0 at padding.
    """
    m = mask.to(torch.promote_types(scores.dtype, torch.float32))
    outcome = scores.to(m.dtype)
    if group_size is not None:
        g = _groups(outcome, group_size)  # [NG, G]
        centred = g - g.mean(dim=1, keepdim=True)
        flat = (g == g[:, :1]).all(dim=1, keepdim=True)
        outcome = torch.where(flat, torch.zeros_like(centred), centred).reshape(-1)
    lengths = m.sum(dim=1).long()  # [N]
    rewards = torch.zeros_like(m)
    rows = torch.nonzero(lengths > 0).squeeze(1)
    rewards[rows, lengths[rows] - 1] = outcome[rows]
    if kl_coef:
        if kl is None:
            raise ValueError("reinforce_pp_returns: kl_coef != 0 needs the per-token kl")
        rewards = rewards - kl_coef * kl.to(m.dtype) * m
    returns = rewards.flip(1).cumsum(1).flip(1)  # return-to-go, γ = 1
    return returns * m


@register_adv_estimator("reinforce_pp", kl_in_reward=True, whiten=True)
def reinforce_pp_advantages(scores: Tensor, mask: Tensor, *, group_size: int, kl: Tensor | None, kl_coef: float,
                            scale: str, eps: float, std_ddof: int) -> Tensor:
    """REINFORCE++: ``reinforce_pp_returns`` of the raw outcome (whitened by the caller)."""
    return reinforce_pp_returns(scores, mask, kl=kl, kl_coef=kl_coef)


@register_adv_estimator("reinforce_pp_baseline", whiten=True)
def reinforce_pp_baseline_advantages(scores: Tensor, mask: Tensor, *, group_size: int, kl: Tensor | None,
                                     kl_coef: float, scale: str, eps: float, std_ddof: int) -> Tensor:
    """REINFORCE++-baseline (Hu et al., REINFORCE++ w/ baseline): the outcome minus its group mean on
    every token of the response (whitened by the caller). The KL is not in the reward: β = ``kl_coef``
    weights a KL loss to the reference (``algo.kl_estimator``; the authors' recipe uses k2), so ``kl``
    is ignored. verl instead centres the score with the summed KL penalty in it; rltrain before
    issue 31 kept the KL as per-token returns (decision 14 in docs/algorithms.md)."""
    return reinforce_pp_returns(scores, mask, group_size=group_size)


@torch.no_grad()
def gdpo_scores(
    components: Tensor,
    weights: Tensor,
    group_size: int,
    *,
    eps: float = 1e-6,
    std_ddof: int = 1,
) -> Tensor:
    """GDPO multi-reward normalisation (``reward.normalize=then_sum``): each reward component is
    normalised within its group, (c − mean_g c)/(std_g c + eps) with the zero-spread rule
    (``group_advantages``), then the components are summed with their weights. Then the paper
    normalises the sum over the batch (``batch_normalize``, ``reward.sum_normalize=batch``), or the
    usual advantage step takes the sum as its score (``reward.sum_normalize=group``).

    Args:
        components: ``[K, N]`` raw component scores, groups contiguous along N.
        weights: ``[K]`` component weights.

    Returns:
        ``[N]`` the weighted sum of group-normalised components.
    """
    if components.dim() != 2 or weights.shape != components.shape[:1]:
        raise ValueError(f"components must be [K, N] with K weights, got {tuple(components.shape)} and "
                         f"{tuple(weights.shape)}")
    normed = torch.stack([group_advantages(c, group_size, eps=eps, std_ddof=std_ddof) for c in components])
    return (weights.to(normed.dtype)[:, None] * normed).sum(dim=0)


@torch.no_grad()
def batch_normalize(scores: Tensor, *, moments: Tensor | None = None, eps: float = 1e-6, std_ddof: int = 1) -> Tensor:
    """GDPO's last step (``reward.sum_normalize=batch``): (s − mean_B s) / (std_B s + eps) over the
    whole batch B, one value per response (GDPO paper and reference code; the result is the advantage).

    Args:
        scores: ``[N]`` this rank's weighted sums of group-normalised components (``gdpo_scores``).
        moments: ``[count, Σs, Σs²]`` of the whole batch (``core.masked_moments`` summed across
            ranks); default: those of ``scores``.
        eps: added to the std. std_ddof: 1 (Bessel, ``torch.std``) or 0.

    Returns:
        ``[N]`` in ``scores``' float dtype; all 0 when the batch has zero spread (decision 11 in docs/algorithms.md).
    """
    if std_ddof not in (0, 1):
        raise ValueError(f"std_ddof must be 0 or 1, got {std_ddof}")
    x = scores.to(torch.promote_types(scores.dtype, torch.float32))  # [N]
    if moments is None:
        moments = core.masked_moments(x, torch.ones_like(x, dtype=torch.bool))
    stats = core.moment_stats(moments, unbiased=std_ddof == 1)
    if stats is None or stats[2]:  # empty, or zero spread up to rounding
        return torch.zeros_like(x)
    mean, var, _ = stats
    return ((x.double() - mean) / (var.sqrt() + eps)).to(x.dtype)


@torch.no_grad()
def group_means(scores: Tensor, group_size: int) -> Tensor:
    """Each response's group mean reward, ``[N]`` (SPO's V(prompt) for ``first_segment_value``)."""
    g = _groups(scores, group_size)
    return g.mean(dim=1, keepdim=True).expand_as(g).reshape(-1)


@torch.no_grad()
def dynamic_sampling_keep(scores: Tensor, group_size: int) -> Tensor:
    """DAPO dynamic sampling: bool ``[num_groups]``, False for groups whose scores are all equal
    (all correct or all wrong: zero advantage, zero gradient). Groups of size 1 are kept (verl).
    Pass the filter metric (accuracy) as ``scores``.
    """
    g = _groups(scores, group_size)  # [NG, G]
    if group_size == 1:
        return torch.ones(g.shape[0], dtype=torch.bool, device=g.device)
    return g.amax(dim=1) != g.amin(dim=1)


@torch.no_grad()
def overlong_penalty(lengths: Tensor, *, max_len: int, cache_len: int, factor: float) -> Tensor:
    """DAPO soft overlong punishment, added to the reward:

        expected = max_len − cache_len;  exceed = |y| − expected;  penalty = min(−exceed/cache_len·factor, 0)

    i.e. 0 up to ``max_len − cache_len`` tokens, then linear down to −factor at ``max_len``
    (DAPO: max_len 20480, cache_len 4096, factor 1.0).

    Args:
        lengths: ``[N]`` response lengths in tokens.

    Returns:
        ``[N]`` float penalties (≤ 0).
    """
    if cache_len <= 0 or max_len <= cache_len:
        raise ValueError(f"need 0 < cache_len < max_len, got cache_len={cache_len}, max_len={max_len}")
    expected = max_len - cache_len
    exceed = lengths.to(torch.promote_types(lengths.dtype, torch.float32)) - expected  # [N]
    return torch.clamp(-exceed / cache_len * factor, max=0.0)
