"""Token selection: which response tokens carry policy gradient (docs/algorithms.md §4.4, §5).

Papers: Wang et al. 2025, "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective
Reinforcement Learning for LLM Reasoning" (high-entropy "forking" tokens); Guo et al. 2025,
"Segment Policy Optimization" §4.4 code (probability mask).

- ``high_entropy_mask``: keep the top ⌈ρ·N⌉ of the N valid tokens by entropy (ρ = 0.2), never a
  padding token. Exactly ⌈ρ·N⌉: ties are broken by row-major position. ⌈ρ·N⌉ is computed
  without float artefacts (ρ·N within 1e-9 of an integer counts as that integer).
- ``prob_mask``: valid ∧ exp(old_logp) < threshold (0.9), SPO's ``use_prob_mask``.

Decision 1 in docs/algorithms.md (batch scope): the threshold is taken over ALL valid response tokens of the step's
batch across ranks. A pure function cannot see other micro-batches or ranks, so the loop either
  (a) exact: gathers every micro-batch's ``core.flatten_valid(entropy, mask)`` across ranks into
      one pool ``[N]``, calls ``high_entropy_mask(pool[None], ones)`` and hands each micro-batch
      its slice through ``core.unflatten_valid`` (this is what ``registry`` selectors do when
      given ``selected=``), or
  (b) threshold: ``pool_threshold(pool, top_ratio=ρ)`` then ``high_entropy_mask(entropy, mask,
      threshold=τ)`` per micro-batch (exact unless entropies tie at τ; ties are all kept).
In one process with one micro-batch the local tensors are the pool and both equal the default.

Normalisation (decision 1 in docs/algorithms.md): ``normalize="all"`` (default; paper) keeps every valid token in the
loss denominators and zeroes the loss of unselected ones; ``"selected"`` (official 80/20 code and
SPO's probability mask) counts only selected tokens. ``TokenSelection`` carries both masks:
    loss = aggregate(loss_mat.masked_fill(~sel.loss_mask, 0), sel.count_mask, mode, ...)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rltrain.algos.core import _bool, _ratio_count, masked_topk

NORMALIZE_MODES = ("all", "selected")


@dataclass(frozen=True)
class TokenSelection:
    """Result of a token selector: the masks the objective takes (``mask ⊇ count_mask ⊇ loss_mask``).

    Attributes:
        loss_mask: bool ``[B, T]``, tokens whose per-token loss is kept (⊆ the response mask).
        count_mask: bool ``[B, T]``, tokens counted in ``aggregate``'s denominators: the
            response mask (``normalize="all"``) or ``loss_mask`` (``"selected"``).
        mask: bool ``[B, T]``, the response mask the selection was made from (valid tokens).
    """

    loss_mask: Tensor
    count_mask: Tensor
    mask: Tensor

    def __getitem__(self, key) -> TokenSelection:
        """The same rows/positions of all three masks (``sel[idx, :width]``: a micro-batch's)."""
        return TokenSelection(loss_mask=self.loss_mask[key], count_mask=self.count_mask[key], mask=self.mask[key])


def make_selection(mask: Tensor, selected: Tensor, normalize: str) -> TokenSelection:
    """Build a ``TokenSelection`` from the response mask and a selection (both ``[B, T]``)."""
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"unknown normalize {normalize!r}; valid: {', '.join(NORMALIZE_MODES)}")
    m = _bool(mask)
    loss_mask = m & _bool(selected)
    return TokenSelection(loss_mask=loss_mask, count_mask=m if normalize == "all" else loss_mask, mask=m)


def top_ratio_count(n: int, top_ratio: float) -> int:
    """⌈ρ·n⌉ (exact for ratios like 0.2 whose float product overshoots an integer)."""
    if not 0.0 < top_ratio <= 1.0:
        raise ValueError(f"top_ratio must be in (0, 1], got {top_ratio}")
    return _ratio_count(top_ratio, n, "ceil")


def high_entropy_mask(
    entropy: Tensor,
    mask: Tensor,
    *,
    top_ratio: float = 0.2,
    threshold: float | Tensor | None = None,
) -> Tensor:
    """Select high-entropy ("forking") tokens.

    Args:
        entropy: ``[B, T]`` token entropies (``core.token_entropy`` of the current policy at the
            sampling temperature).
        mask: ``[B, T]`` valid response tokens.
        top_ratio: ρ; without ``threshold`` exactly ⌈ρ·N⌉ of the N valid tokens are kept.
        threshold: a batch-wide τ (``pool_threshold``); keeps valid tokens with entropy ≥ τ.

    Returns:
        bool ``[B, T]``, never True on padding.
    """
    m = _bool(mask)
    if threshold is not None:
        return m & (entropy.detach() >= torch.as_tensor(threshold, dtype=entropy.dtype, device=entropy.device))
    k = top_ratio_count(int(m.sum()), top_ratio)
    return masked_topk(entropy, m, k)


def pool_threshold(pool: Tensor, *, top_ratio: float) -> Tensor:
    """τ = the ⌈ρ·N⌉-th largest value of a flat pool ``[N]`` (e.g. all-gathered valid entropies).

    Returns a 0-d tensor; +inf for an empty pool (selects nothing).
    """
    flat = pool.detach().reshape(-1)
    if flat.numel() == 0:
        return torch.tensor(float("inf"), dtype=flat.dtype, device=flat.device)
    k = top_ratio_count(flat.numel(), top_ratio)
    return torch.sort(flat, descending=True).values[k - 1]


def prob_mask(old_logp: Tensor, mask: Tensor, *, threshold: float = 0.9) -> Tensor:
    """SPO probability mask: valid tokens whose rollout probability exp(old_logp) < threshold.

    Args:
        old_logp: ``[B, T]`` log-probs of the sampled tokens under the rollout policy (at the
            sampling temperature).
        mask: ``[B, T]`` valid response tokens.

    Returns:
        bool ``[B, T]``.
    """
    return _bool(mask) & (torch.exp(old_logp.detach()) < threshold)

