"""Rollout ↔ trainer mismatch: how far the sampler's log-probs are from the trainer's, and the
corrections for it (docs/algorithms.md §10, "Rollout correction").

The sampler (KV-cached decode, possibly bf16) and the trainer (the training forward) are two
computations of the same policy; "on-policy" holds only as far as they agree. With
ρ_t = π_trainer(y_t) / π_rollout(y_t) per sampled token:

- ``mismatch_metrics``: mean |Δlogp|, the k3 estimate of KL(rollout ‖ trainer) (mean over tokens,
  samples drawn from the rollout policy), max ρ and its 99th percentile.
- ``correction_weights``: per-token weights for the policy-gradient loss.
  ``tis`` truncated importance sampling, w = min(ρ, C) (Yao et al. 2025, C = 2);
  ``icepop`` masked importance sampling (IcePop), w = ρ where ``icepop_low`` ≤ ρ ≤ ``icepop_high``,
  else 0 (the token is dropped); the band is 0.5 … 5 by default, the reference value (OpenRLHF's
  ``is_correction_threshold``, verl's preset);
  ``seq_mask`` drop whole sequences whose geometric-mean ρ leaves [seq_low, seq_high].
  Weights are detached: they rescale (or drop) a token's gradient, they carry none.
"""
from __future__ import annotations

import torch
from torch import Tensor

from rltrain.algos.core import _bool

CORRECTION_MODES = ("none", "tis", "icepop", "seq_mask")
LOG_RATIO_CLAMP = 20.0


@torch.no_grad()
def mismatch_metrics(rollout_logp: Tensor, trainer_logp: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Mismatch between the sampler's and the trainer's log-probs of the sampled tokens.

    Args:
        rollout_logp, trainer_logp: ``[B, T]`` log-probs of the same tokens (same temperature).
        mask: ``[B, T]`` valid response tokens.

    Returns:
        0-d float64 tensors: ``abs_dlogp_mean``, ``k3`` (mean of exp(−δ)+δ−1 with
        δ = log π_rollout − log π_trainer: KL(rollout‖trainer)), ``ratio_max`` and ``ratio_p99``
        of ρ = π_trainer/π_rollout, and ``tokens``. Zeros (ratio 1) when nothing is valid.
    """
    m = _bool(mask)
    d = (trainer_logp.double() - rollout_logp.double())[m].clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N] log ρ
    if d.numel() == 0:
        zero, one = torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64)
        return {"abs_dlogp_mean": zero, "k3": zero, "ratio_max": one, "ratio_p99": one, "tokens": zero}
    ratio = d.exp()
    return {
        "abs_dlogp_mean": d.abs().mean(),
        "k3": (ratio - 1 - d).mean(),  # exp(−δ) + δ − 1 with δ = −log ρ
        "ratio_max": ratio.max(),
        "ratio_p99": torch.quantile(ratio, 0.99),
        "tokens": torch.tensor(float(d.numel()), dtype=torch.float64),
    }


@torch.no_grad()
def correction_weights(
    trainer_logp: Tensor,
    rollout_logp: Tensor,
    mask: Tensor,
    *,
    mode: str = "none",
    c: float = 2.0,
    icepop_low: float = 0.5,
    icepop_high: float = 5.0,
    seq_low: float = 0.5,
    seq_high: float = 2.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token loss weights ``[B, T]`` (detached, 0 on padding) and ``{"kept_frac": ...}``.

    Args:
        trainer_logp: ``[B, T]`` the trainer's log-probs of the sampled tokens under the policy that
            sampled them (the old log-probs); rollout_logp: the sampler's.
        mode: one of ``CORRECTION_MODES``. c: the TIS cap (> 1).
        icepop_low, icepop_high: IcePop's band: a token keeps weight ρ inside it and gets 0 outside
            (0 < low < 1 < high). Example: ρ = 1.5 in [0.5, 5] → weight 1.5; ρ = 6 → 0.
        seq_low, seq_high: the band for a sequence's geometric-mean ratio (``seq_mask``).
    """
    if mode not in CORRECTION_MODES:
        raise ValueError(f"unknown rollout correction {mode!r}; valid: {', '.join(CORRECTION_MODES)}")
    if c <= 1.0:
        raise ValueError(f"rollout correction cap c must be > 1, got {c}")
    if not 0.0 < icepop_low < 1.0 < icepop_high:
        raise ValueError(f"icepop band must satisfy 0 < icepop_low < 1 < icepop_high, got [{icepop_low}, {icepop_high}]")
    if not 0.0 < seq_low < 1.0 < seq_high:
        raise ValueError(f"seq_mask band must satisfy 0 < seq_low < 1 < seq_high, got [{seq_low}, {seq_high}]")
    m = _bool(mask)
    log_ratio = (trainer_logp.float() - rollout_logp.float()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    ratio = log_ratio.exp()
    ones = torch.ones_like(ratio)
    if mode == "none":
        w = ones
    elif mode == "tis":
        w = ratio.clamp(max=c)
    elif mode == "icepop":
        w = torch.where((ratio >= icepop_low) & (ratio <= icepop_high), ratio, torch.zeros_like(ratio))
    else:  # seq_mask: geometric mean of ρ over each sequence's valid tokens
        n = m.sum(-1).clamp(min=1)  # [B]
        geo = (torch.where(m, log_ratio, torch.zeros_like(log_ratio)).sum(-1) / n).exp()  # [B]
        keep = (geo >= seq_low) & (geo <= seq_high)
        w = keep[:, None].to(ratio.dtype) * ones
    w = torch.where(m, w, torch.zeros_like(w))
    kept = (w > 0) & m
    return w, {"kept_frac": kept.sum().double() / m.sum().clamp(min=1).double()}
