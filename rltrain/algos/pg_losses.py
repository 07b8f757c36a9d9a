"""Policy losses of the 2026 menu (docs/algorithms.md §10): GSPO, CISPO, SAPO, GMPO.

All take ``(logp, old_logp, advantages, mask)`` ``[B, T]`` and return the per-token loss ``[B, T]``
(0 on padding); aggregation, selection and the KL term are the objective's (``algos.objective``).
Each ``*_policy_loss`` below its loss is the registered ``policy_loss=`` entry (``algos.registry``):
the loss and its metrics, its keyword defaults the config's.
ρ_t = π_θ(y_t)/π_old(y_t) per token; sg = stop-gradient.

- GSPO (Zheng et al. 2025, arXiv 2507.18071). Sequence ratio s_i = exp(mean_t log ρ_{i,t}) over the
  response's valid tokens, loss −min(s_i·Â_i, clip(s_i, 1−ε_low, 1+ε_high)·Â_i) with one advantage
  per sequence (the masked mean of its token advantages: GRPO's are constant along a response).
  The sequence loss is written on each of its valid tokens, so ``seq-mean-token-mean`` aggregation
  gives the paper's (1/G)·Σ_i exactly (verl forces that mode for GSPO; here it is the user's choice,
  token-mean weights sequences by length). ``level="token"`` is GSPO-token: s_{i,t} = sg(s_i)·ρ'_t
  with ρ'_t = π_θ(y_t)/sg(π_θ(y_t)), equal to s_i in value but with a per-token gradient and the
  token's own advantage, so token selection and token-level advantages apply. Paper ε: 3e-4 / 4e-4.
- CISPO (MiniMax-M1, arXiv 2506.13585): −sg(clip(ρ_t, 1−ε_low, 1+ε_high))·Â_t·log π_θ(y_t); the clip
  bounds the weight only, every token keeps its gradient. MiniMax drops the lower bound (ε_low = 1
  here, the weight's floor is 0). TRL caps the ratio itself at ``epsilon_high``; ours caps it at
  1 + clip_high (default 4: a cap of 5, unconfirmed against MiniMax's value).
- SAPO (soft adaptive policy optimization, Qwen 2025): the hard clip becomes a smooth gate
  f(ρ) = σ(τ(ρ − 1))·4/τ, loss −f(ρ_t)·Â_t, τ = τ_pos where Â > 0 and τ_neg elsewhere (TRL's
  defaults 1.0 and 1.05); f'(1) = 1, so on-policy the gradient is REINFORCE's.
- GMPO (geometric-mean policy optimisation, Zhao et al. 2025, arXiv 2507.20673; verl's ``geo_mean``):
  the geometric mean of the token terms instead of their arithmetic mean. Per response, each token's
  log-ratio is clipped in log space on the side the advantage's sign makes pessimistic,
  l̃_t = sgn(Â)·min(sgn(Â)·log ρ_t, sgn(Â)·clip(log ρ_t, −ε_low, ε_high)), and the loss is
  −Â_i·exp(mean_t l̃_t) with one advantage per response (the masked mean of its token advantages, as
  GSPO). Like GSPO's, the sequence loss is written on each valid token, so ``seq-mean-token-mean``
  gives verl's mean over responses (token-mean weights responses by length). ε_low = ε_high = 0.4
  (the paper's and verl's recipe): the token ratio is kept in [e^−0.4, e^0.4] = [0.67, 1.49].
"""
from __future__ import annotations

import torch
from torch import Tensor

from rltrain.algos.core import _bool, masked_mean
from rltrain.algos.ppo import LOG_RATIO_CLAMP, importance_ratio, ratio_metrics, surrogate_terms
from rltrain.algos.registry import no_selection, register_policy_loss

GSPO_LEVELS = ("sequence", "token")


def _zero(x: Tensor) -> Tensor:
    return torch.zeros((), dtype=x.dtype, device=x.device)


def sequence_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """mean_t (log π_θ − log π_old) over each sequence's valid tokens, ``[B, 1]`` (0 for an empty row)."""
    m = _bool(mask)
    lr = torch.where(m, logp - old_logp, _zero(logp))
    n = m.sum(-1, keepdim=True).clamp(min=1)
    return (lr.sum(-1, keepdim=True) / n).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def gspo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, clip_low: float,
              clip_high: float, level: str = "sequence") -> tuple[Tensor, Tensor]:
    """GSPO per-token loss ``[B, T]`` and the clipped-sequence indicator ``[B, 1]`` (see module doc)."""
    if level not in GSPO_LEVELS:
        raise ValueError(f"unknown GSPO level {level!r}; valid: {', '.join(GSPO_LEVELS)}")
    m = _bool(mask)
    s_log = sequence_log_ratio(logp, old_logp, m)  # [B, 1]
    if level == "sequence":
        ratio = torch.exp(s_log).expand_as(logp)  # [B, T] one ratio per sequence, gradient through s_i
        adv = masked_mean(advantages, m, dim=-1).unsqueeze(-1).expand_as(logp)  # [B, T] one advantage
    else:
        ratio = torch.exp(s_log.detach() + logp - logp.detach())  # [B, T] value s_i, per-token gradient
        adv = advantages
    loss = torch.maximum(*surrogate_terms(ratio, adv, clip_low=clip_low, clip_high=clip_high))
    was_clipped = (torch.exp(s_log) < 1.0 - clip_low) | (torch.exp(s_log) > 1.0 + clip_high)  # [B, 1]
    return torch.where(m, loss, _zero(loss)), was_clipped.detach()


def cispo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, clip_low: float,
               clip_high: float) -> Tensor:
    """CISPO per-token loss ``[B, T]``: −sg(clip(ρ, 1−ε_low, 1+ε_high))·Â·log π_θ."""
    m = _bool(mask)
    weight = importance_ratio(logp, old_logp, m).clamp(1.0 - clip_low, 1.0 + clip_high).detach()
    loss = -weight * advantages * logp
    return torch.where(m, loss, _zero(loss))


def sapo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, tau_pos: float,
              tau_neg: float) -> Tensor:
    """SAPO per-token loss ``[B, T]``: −σ(τ(ρ−1))·(4/τ)·Â with τ by the advantage's sign."""
    m = _bool(mask)
    ratio = importance_ratio(logp, old_logp, m)
    tau = torch.where(advantages > 0, torch.full_like(ratio, tau_pos), torch.full_like(ratio, tau_neg))
    gate = torch.sigmoid(tau * (ratio - 1.0)) * 4.0 / tau
    loss = -gate * advantages
    return torch.where(m, loss, _zero(loss))


def gmpo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, clip_low: float,
              clip_high: float) -> tuple[Tensor, Tensor]:
    """GMPO per-token loss ``[B, T]`` (−Â_i·exp(mean_t l̃_t) on each valid token, see the module doc)
    and the tokens whose clipped log-ratio was taken (no gradient through them) ``[B, T]``."""
    m = _bool(mask)
    adv = masked_mean(advantages, m, dim=-1).unsqueeze(-1)  # [B, 1] one advantage per response
    sign = torch.sign(adv)  # [B, 1]
    log_ratio = torch.where(m, logp - old_logp, _zero(logp)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    clipped = log_ratio.clamp(-clip_low, clip_high)  # [B, T] the clip, in log space
    kept = sign * torch.minimum(sign * log_ratio, sign * clipped)  # [B, T] the pessimistic side per sign
    n = m.sum(-1, keepdim=True).clamp(min=1)  # [B, 1]
    seq_ratio = torch.exp(torch.where(m, kept, _zero(kept)).sum(-1, keepdim=True) / n)  # [B, 1] geometric mean
    loss = (-adv * seq_ratio).expand_as(logp)  # [B, T]
    took_clip = m & (kept != log_ratio)  # [B, T]
    return torch.where(m, loss, _zero(loss)), took_clip.detach()


# --------------------------------------------------------------------------- the registered losses


@register_policy_loss("gspo", checks={"clip_low": "≥ 0", "clip_high": "≥ 0", "level": GSPO_LEVELS})
def gspo_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, clip_low: float = 3e-4,
                     clip_high: float = 4e-4, level: str = "sequence", selected: Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``policy_loss=gspo`` (``gspo_loss``); ``clipfrac`` = fraction of clipped sequences.

    Args:
        clip_low, clip_high: ε of the sequence ratio (the paper's 3e-4 / 4e-4: sequence ratios stay near 1).
        level: sequence (one ratio and advantage per response) | token (GSPO-token: per-token gradient).
    """
    no_selection("gspo", selected)
    loss, clipped = gspo_loss(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high, level=level)
    metrics = ratio_metrics(logp, old_logp, mask)
    rows = _bool(mask).any(-1)
    metrics["clipfrac"] = clipped[rows].float().mean() if rows.any() else clipped.new_zeros((), dtype=torch.float32)
    return loss, metrics


@register_policy_loss("cispo", checks={"clip_low": "≥ 0", "clip_high": "≥ 0"})
def cispo_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, clip_low: float = 1.0,
                      clip_high: float = 4.0, selected: Tensor | None = None,
                      generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``policy_loss=cispo`` (``cispo_loss``); ``clipfrac`` = fraction of tokens whose weight was clipped.

    Args:
        clip_low: the weight is clipped below at 1 − clip_low (1.0: no lower bound, as MiniMax).
        clip_high: the weight is clipped above at 1 + clip_high.
    """
    no_selection("cispo", selected)
    loss = cispo_loss(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high)
    metrics = ratio_metrics(logp, old_logp, mask)
    ratio = importance_ratio(logp.detach(), old_logp, mask)
    metrics["clipfrac"] = masked_mean(((ratio < 1 - clip_low) | (ratio > 1 + clip_high)).float(), _bool(mask))
    return loss, metrics


@register_policy_loss("sapo", checks={"tau_pos": "> 0", "tau_neg": "> 0"})
def sapo_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, tau_pos: float = 1.0,
                     tau_neg: float = 1.05, selected: Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``policy_loss=sapo`` (``sapo_loss``): a soft gate instead of the clip.

    Args:
        tau_pos: gate temperature for positive advantages.
        tau_neg: gate temperature for negative advantages (larger: negatives are damped faster).
    """
    no_selection("sapo", selected)
    loss = sapo_loss(logp, old_logp, advantages, mask, tau_pos=tau_pos, tau_neg=tau_neg)
    return loss, ratio_metrics(logp, old_logp, mask)


@register_policy_loss("gmpo", checks={"clip_low": "≥ 0", "clip_high": "≥ 0"})
def gmpo_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, clip_low: float = 0.4,
                     clip_high: float = 0.4, selected: Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``policy_loss=gmpo`` (``gmpo_loss``); ``clipfrac`` = fraction of tokens whose clipped log-ratio was taken.

    Args:
        clip_low: each token's log-ratio is clipped below at −clip_low (the paper's and verl's 0.4).
        clip_high: each token's log-ratio is clipped above at clip_high (0.4).
    """
    no_selection("gmpo", selected)
    loss, took_clip = gmpo_loss(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high)
    metrics = ratio_metrics(logp, old_logp, mask)
    metrics["clipfrac"] = masked_mean(took_clip.float(), _bool(mask))
    return loss, metrics
