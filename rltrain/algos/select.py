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
from rltrain.algos.registry import SCOPES, check_scope, check_selected, register_token_selection

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



# --------------------------------------------------------------------------- the registered selectors


@register_token_selection("all")
def select_all(mask: Tensor, *, entropy: Tensor | None = None, old_logp: Tensor | None = None,
               selected: Tensor | None = None) -> TokenSelection:
    """``token_selection=all``: every valid token, counted in the denominators."""
    if selected is not None:
        raise ValueError("token selection 'all' takes no `selected`")
    m = _bool(mask)
    return TokenSelection(loss_mask=m, count_mask=m, mask=m)


def high_entropy_pool_select(mask: Tensor, *, top_ratio: float, normalize: str, scope: str,
                             entropy: Tensor | None = None, old_logp: Tensor | None = None) -> Tensor:
    """``high_entropy_mask`` with the selector's options (the entry's ``select``; ``normalize`` unused)."""
    check_scope(scope)
    if entropy is None:
        raise ValueError("token selection 'high_entropy' needs `entropy`")
    return high_entropy_mask(entropy, mask, top_ratio=top_ratio)


@register_token_selection("high_entropy", select=high_entropy_pool_select, requires=frozenset({"entropy"}),
                          checks={"top_ratio": "in (0, 1]", "normalize": NORMALIZE_MODES, "scope": SCOPES})
def select_high_entropy(mask: Tensor, *, top_ratio: float = 0.2, normalize: str = "all", scope: str = "batch",
                        entropy: Tensor | None = None, old_logp: Tensor | None = None,
                        selected: Tensor | None = None) -> TokenSelection:
    """``token_selection=high_entropy``: the top-⌈ρN⌉ entropy ("forking") tokens (Beyond the 80/20 rule,
    docs/algorithms.md §5).

    Args:
        top_ratio: fraction ρ of the batch's valid tokens kept (highest entropy).
        normalize: the loss denominator: all response tokens (paper, default) | selected (official code).
        scope: the threshold's pool: batch (the whole step, across ranks) | micro_batch (official code).
    """
    check_selected("high_entropy", scope, selected)
    if selected is None:
        selected = high_entropy_pool_select(mask, top_ratio=top_ratio, normalize=normalize, scope=scope,
                                            entropy=entropy)
    return make_selection(mask, selected, normalize)


@register_token_selection("prob_mask", requires=frozenset({"old_logp"}),
                          checks={"threshold": "in (0, 1]", "normalize": NORMALIZE_MODES})
def select_prob_mask(mask: Tensor, *, threshold: float = 0.9, normalize: str = "all", entropy: Tensor | None = None,
                     old_logp: Tensor | None = None, selected: Tensor | None = None) -> TokenSelection:
    """``token_selection=prob_mask``: SPO's probability mask as a selection for the other policy-gradient
    loops, only tokens sampled with probability below ``threshold`` (per token: no pool). SPO itself
    masks with ``algo.prob_mask``.

    Args:
        threshold: tokens sampled with probability ≥ this get no policy gradient.
        normalize: the loss denominator: all response tokens | selected.
    """
    if selected is not None:
        raise ValueError("token selection 'prob_mask' is per-token; do not pass `selected`")
    if old_logp is None:
        raise ValueError("token selection 'prob_mask' needs `old_logp`")
    return make_selection(mask, prob_mask(old_logp, mask, threshold=threshold), normalize)
