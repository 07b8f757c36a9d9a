"""Registries: advantage estimators, policy losses and token selectors, one signature each.

A config group option's ``name`` picks the entry (``get(registry, name)``); its other fields are
exactly the entry's keyword options (``**options`` below). Unknown names fail listing the valid
ones. The loops call every entry through the signature of its registry and never branch on a
name; what differs between entries is described by data on the entry (``select``,
``requires``, ``needs_pool``).

1. ``"advantage"`` — ``fn(inputs: AdvantageInputs, **options) -> (advantages [B, T], returns [B, T] | None)``
       grpo       options: scale, eps, std_ddof       needs: scores, group_size, mask
       gae        options: gamma, lam                 needs: token_rewards, values, mask
                                                      (+ finished, bootstrap_values); returns ≠ None
       spo_chain  options: first_segment_value        needs: cut_positions, cut_values, scores, mask
                                                      (+ group_size for "group_mean")
       spo_tree   options: variant                    needs: tree_parent, tree_leaf_reward,
                                                      edge_child, mask
   Advantages are raw: batch-wide whitening (``core.masked_whiten`` with all-reduced
   ``core.masked_moments``) and SPO's probability mask are separate steps in the loop.

2. ``"policy_loss"`` — a ``PolicyLoss``; calling it runs
       fn(logp, old_logp, advantages, mask, *, selected=None, generator=None, **options)
           -> (loss_mat [B, T], metrics: dict[str, 0-d detached Tensor])
       clip       options: clip_low, clip_high, dual_clip
       clip_cov   options: clip_low, clip_high, cov_low, cov_high, select_ratio, scope
       kl_cov     options: select_ratio, kl_coef, scope
       gspo       options: clip_low, clip_high, level (sequence | token)     (pg_losses)
       cispo      options: clip_low, clip_high                               (pg_losses)
       sapo       options: tau_pos, tau_neg                                  (pg_losses)
       gmpo       options: clip_low, clip_high                               (pg_losses)
   ``mask`` is the *response* mask (all valid tokens); token selection is applied afterwards.
   Metrics: ratio_mean, ratio_max, approx_kl (every loss), clipfrac (clip, clip_cov, gspo, cispo, gmpo),
   selected_frac (clip_cov, kl_cov) — over this call's valid tokens (weight by the micro-batch's
   token count when averaging over micro-batches). ReaLHF/SPO's early stop ("mean ratio > x ⇒
   loss × 0") reads ``metrics["ratio_mean"]``.

3. ``"token_selection"`` — a ``TokenSelector``; calling it runs
       fn(mask, *, entropy=None, old_logp=None, selected=None, **options) -> select.TokenSelection
       all           options: (none)
       high_entropy  options: top_ratio, normalize, scope      requires: entropy
       prob_mask     options: threshold, normalize             requires: old_logp
   ``requires`` names the per-token tensors the loop must compute and pass.

Batch-wide selection protocol (decisions 1 and 7 in docs/algorithms.md), identical for both registries. The pool is
one optimizer step's batch: all its micro-batches on all ranks. When
``spec.needs_pool(options)`` is True (``scope="batch"``), before the backward passes of that
optimizer step the loop:
    1. computes, for every micro-batch, the current policy's per-token tensors (a no-grad
       forward is enough: selections use detached values; dropout must be off so it matches
       the gradient pass) and flattens the valid ones with ``core.flatten_valid(x, mask)``:
       for a policy loss ``logp``, ``old_logp`` and the ``advantages`` the loss will see
       (after whitening); for a token selector the tensors in ``requires``;
    2. concatenates them over micro-batches in order and all-gathers over ranks in rank order
       into pool tensors ``[N]``, identical on every rank;
    3. calls ``spec.select`` with the pool as one row — policy loss:
       ``spec.select(pool_logp[None], pool_old[None], pool_adv[None], ones, generator=g, **options)``;
       token selector: ``spec.select(ones, entropy=pool_entropy[None], ..., **options)``, with
       ``ones = torch.ones(1, N, dtype=torch.bool)`` — getting ``bool [1, N]``. ``g`` must
       draw identically on every rank (same seed, e.g. seed + step, CPU generator);
    4. gives each micro-batch its slice of that row (offset = valid tokens of earlier ranks and
       earlier micro-batches) as ``selected=core.unflatten_valid(slice, mask, fill=False)``.
With ``scope="micro_batch"`` (the official behaviour) the loop passes ``selected=None`` and the
function selects from its own tensors. A ``scope="batch"`` call without ``selected`` raises.

The loss of one micro-batch, with ``sel`` the TokenSelection and the global denominators
``counts`` = Σ over micro-batches and ranks of ``core.aggregate_counts(sel.count_mask)``:
    loss_mat, metrics = policy_loss(logp, old_logp, adv, mask, selected=..., generator=g, **opts)
    loss = core.aggregate(loss_mat.masked_fill(~sel.loss_mask, 0), sel.count_mask, mode,
                          constant=C, num_tokens=counts[0], num_seqs=counts[1])
and the micro-batch losses are summed (gradient accumulation) — see ``core`` for why this is
exactly the full-batch loss.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rltrain.algos import entropy as entropy_mod
from rltrain.algos import grpo, pg_losses, ppo, select, spo
from rltrain.algos.core import _bool, masked_mean

SCOPES = ("batch", "micro_batch")


# --------------------------------------------------------------------------------------------
# Advantage estimators
# --------------------------------------------------------------------------------------------
@dataclass
class AdvantageInputs:
    """Everything an advantage estimator may read; each estimator names the fields it needs.

    Attributes:
        mask: bool ``[B, T]`` valid response tokens (right-padded).
        scores: ``[B]`` sequence rewards (grpo, spo_chain).
        group_size: G; rows ``[g·G, (g+1)·G)`` answer the same prompt (grpo, spo_chain).
        token_rewards: ``[B, T]`` per-token rewards, ``ppo.token_rewards`` (gae).
        values: ``[B, T]`` critic V(s_t), denormalised (gae).
        finished: bool ``[B]``, ended with EOS (gae; None = all finished).
        bootstrap_values: ``[B]`` V after the last token for truncated rows (gae; optional).
        cut_positions: per row, SPO cut positions (spo_chain).
        cut_values: per row, MC values at the cut positions (spo_chain).
        tree_parent: ``[M]`` forest parent indices, −1 = root (spo_tree).
        tree_leaf_reward: ``[M]`` leaf rewards, NaN for internal nodes (spo_tree).
        edge_child: ``[B]`` long, the child node of the edge each row trains on (spo_tree).
    """

    mask: Tensor
    scores: Tensor | None = None
    group_size: int | None = None
    token_rewards: Tensor | None = None
    values: Tensor | None = None
    finished: Tensor | None = None
    bootstrap_values: Tensor | None = None
    cut_positions: Sequence[Sequence[int]] | None = None
    cut_values: Sequence[Sequence[float]] | None = None
    tree_parent: Sequence[int] | Tensor | None = None
    tree_leaf_reward: Tensor | None = None
    edge_child: Tensor | None = None


def _require(inputs: AdvantageInputs, estimator: str, *fields: str) -> None:
    missing = [f for f in fields if getattr(inputs, f) is None]
    if missing:
        raise ValueError(f"advantage estimator {estimator!r} needs AdvantageInputs.{', '.join(missing)}")


def _broadcast(seq_values: Tensor, mask: Tensor) -> Tensor:
    """``[B]`` → ``[B, T]`` on valid tokens, 0 on padding."""
    m = _bool(mask)
    v = seq_values.to(torch.promote_types(seq_values.dtype, torch.float32)).to(m.device)
    return torch.where(m, v[:, None], torch.zeros((), dtype=v.dtype, device=m.device))


def grpo_advantages(inputs: AdvantageInputs, *, scale: str, eps: float, std_ddof: int) -> tuple[Tensor, None]:
    """GRPO / Dr. GRPO: ``grpo.group_advantages`` broadcast to every token of the response."""
    _require(inputs, "grpo", "scores", "group_size")
    adv = grpo.group_advantages(inputs.scores, inputs.group_size, scale=scale, eps=eps, std_ddof=std_ddof)
    return _broadcast(adv, inputs.mask), None


def gae_advantages(inputs: AdvantageInputs, *, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """PPO: ``ppo.gae`` on token rewards and critic values; also returns the returns."""
    _require(inputs, "gae", "token_rewards", "values")
    return ppo.gae(
        inputs.token_rewards, inputs.values, inputs.mask, gamma=gamma, lam=lam,
        finished=inputs.finished, bootstrap_values=inputs.bootstrap_values,
    )


def spo_chain_advantages(inputs: AdvantageInputs, *, first_segment_value: str) -> tuple[Tensor, None]:
    """SPO-chain: ``spo.chain_advantages``; V(prompt) = the group's mean score ("group_mean")."""
    _require(inputs, "spo_chain", "cut_positions", "cut_values", "scores")
    prompt_values = None
    if first_segment_value == "group_mean":
        _require(inputs, "spo_chain", "group_size")
        prompt_values = grpo.group_means(inputs.scores, inputs.group_size)
    adv = spo.chain_advantages(
        inputs.cut_positions, inputs.cut_values, inputs.scores, inputs.mask,
        first_segment_value=first_segment_value, prompt_values=prompt_values,
    )
    return adv, None


def spo_tree_advantages(inputs: AdvantageInputs, *, variant: str) -> tuple[Tensor, None]:
    """SPO-tree: each row is one edge; its advantage (``spo.tree_edge_advantages``) fills the
    row's segment tokens."""
    _require(inputs, "spo_tree", "tree_parent", "tree_leaf_reward", "edge_child")
    values, stds = spo.tree_values(inputs.tree_parent, inputs.tree_leaf_reward)
    edge_adv = spo.tree_edge_advantages(inputs.tree_parent, values, stds, variant=variant)  # [M]
    row_adv = edge_adv[inputs.edge_child.long().cpu()]  # [B]
    if torch.isnan(row_adv).any():
        raise ValueError("spo_tree: edge_child names a root node (roots have no incoming edge)")
    return _broadcast(row_adv.to(torch.float32), inputs.mask), None


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., tuple[Tensor, Tensor | None]]] = {
    "grpo": grpo_advantages,
    "gae": gae_advantages,
    "spo_chain": spo_chain_advantages,
    "spo_tree": spo_tree_advantages,
}


# --------------------------------------------------------------------------------------------
# Policy losses
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyLoss:
    """A registered policy loss.

    Attributes:
        fn: ``fn(logp, old_logp, advantages, mask, *, selected=None, generator=None, **options)
            -> (loss_mat [B, T], metrics)``.
        select: ``select(logp, old_logp, advantages, mask, *, generator=None, **options)
            -> bool [B, T]``, the selection ``fn`` accepts as ``selected``; None when the loss
            selects nothing.
        zero_without_advantage: a sequence whose advantages are all 0 has loss 0 and gradient 0
            whatever its log-probs, so the loop may skip its forward and backward (True for the
            clipped surrogates; False for KL-Cov, whose penalty does not vanish with A = 0).
    """

    fn: Callable[..., tuple[Tensor, dict[str, Tensor]]]
    select: Callable[..., Tensor] | None = None
    zero_without_advantage: bool = True

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Tensor, dict[str, Tensor]]:
        return self.fn(*args, **kwargs)

    def needs_pool(self, options: Mapping[str, Any]) -> bool:
        """True when the loop must compute ``selected`` on the batch pool (``scope="batch"``)."""
        return self.select is not None and _check_scope(options["scope"]) == "batch"


def _check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; valid: {', '.join(SCOPES)}")
    return scope


def _check_selected(name: str, scope: str, selected: Tensor | None) -> None:
    _check_scope(scope)
    if scope == "batch" and selected is None:
        raise ValueError(
            f"{name} with scope='batch' needs `selected` computed on the batch pool with the entry's `select`"
        )
    if scope == "micro_batch" and selected is not None:
        raise ValueError(f"{name} with scope='micro_batch' selects locally; do not pass `selected`")


def _selected_frac(selected: Tensor, mask: Tensor) -> Tensor:
    m = _bool(mask)
    return masked_mean((_bool(selected) & m).to(torch.float32), m)


def clip_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None = None,
    selected: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO / GRPO / DAPO clipped surrogate (``ppo.clipped_surrogate``); ``generator`` unused."""
    if selected is not None:
        raise ValueError("policy loss 'clip' selects no tokens; do not pass `selected`")
    loss = ppo.clipped_surrogate(
        logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip
    )
    metrics = ppo.ratio_metrics(logp, old_logp, mask)
    metrics["clipfrac"] = ppo.clip_fraction(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high)
    return loss, metrics


def clip_cov_policy_loss(
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
    scope: str,
    selected: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clip-Cov (``entropy.clip_cov_loss``)."""
    _check_selected("clip_cov", scope, selected)
    if selected is None:
        if generator is None:
            raise ValueError("clip_cov with scope='micro_batch' needs `generator`")
        selected = clip_cov_pool_select(
            logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high, cov_low=cov_low,
            cov_high=cov_high, select_ratio=select_ratio, scope=scope, generator=generator,
        )
    loss = entropy_mod.clip_cov_loss(
        logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high, cov_low=cov_low,
        cov_high=cov_high, select_ratio=select_ratio, selected=selected,
    )
    metrics = ppo.ratio_metrics(logp, old_logp, mask)
    metrics["clipfrac"] = ppo.clip_fraction(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high)
    metrics["selected_frac"] = _selected_frac(selected, mask)
    return loss, metrics


def clip_cov_pool_select(
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
    scope: str,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``entropy.clip_cov_select`` with the Clip-Cov options."""
    _check_scope(scope)
    if generator is None:
        raise ValueError("clip_cov selection needs `generator`")
    return entropy_mod.clip_cov_select(
        logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high, cov_low=cov_low,
        cov_high=cov_high, select_ratio=select_ratio, generator=generator,
    )


def kl_cov_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    select_ratio: float,
    kl_coef: float,
    scope: str,
    selected: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KL-Cov (``entropy.kl_cov_loss``); ``generator`` unused."""
    _check_selected("kl_cov", scope, selected)
    if selected is None:
        selected = entropy_mod.kl_cov_select(logp, advantages, mask, select_ratio=select_ratio)
    loss = entropy_mod.kl_cov_loss(
        logp, old_logp, advantages, mask, select_ratio=select_ratio, kl_coef=kl_coef, selected=selected
    )
    metrics = ppo.ratio_metrics(logp, old_logp, mask)
    metrics["selected_frac"] = _selected_frac(selected, mask)
    return loss, metrics


def kl_cov_pool_select(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    select_ratio: float,
    kl_coef: float,
    scope: str,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``entropy.kl_cov_select`` with the KL-Cov options (``kl_coef``, ``generator`` unused)."""
    _check_scope(scope)
    return entropy_mod.kl_cov_select(logp, advantages, mask, select_ratio=select_ratio)


def _no_selection(name: str, selected: Tensor | None) -> None:
    if selected is not None:
        raise ValueError(f"policy loss {name!r} selects no tokens; do not pass `selected`")


def gspo_policy_loss(logp, old_logp, advantages, mask, *, clip_low: float, clip_high: float, level: str = "sequence",
                     selected=None, generator=None):
    """GSPO (``pg_losses.gspo_loss``): sequence-level ratio; ``clipfrac`` = fraction of clipped sequences."""
    _no_selection("gspo", selected)
    loss, clipped = pg_losses.gspo_loss(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high,
                                        level=level)
    metrics = ppo.ratio_metrics(logp, old_logp, mask)
    rows = _bool(mask).any(-1)
    metrics["clipfrac"] = clipped[rows].float().mean() if rows.any() else clipped.new_zeros((), dtype=torch.float32)
    return loss, metrics


def cispo_policy_loss(logp, old_logp, advantages, mask, *, clip_low: float, clip_high: float, selected=None,
                      generator=None):
    """CISPO (``pg_losses.cispo_loss``); ``clipfrac`` = fraction of tokens whose weight was clipped."""
    _no_selection("cispo", selected)
    loss = pg_losses.cispo_loss(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high)
    metrics = ppo.ratio_metrics(logp, old_logp, mask)
    ratio = ppo.importance_ratio(logp.detach(), old_logp, mask)
    metrics["clipfrac"] = masked_mean(((ratio < 1 - clip_low) | (ratio > 1 + clip_high)).float(), _bool(mask))
    return loss, metrics


def sapo_policy_loss(logp, old_logp, advantages, mask, *, tau_pos: float, tau_neg: float, selected=None,
                     generator=None):
    """SAPO (``pg_losses.sapo_loss``): soft gate instead of the clip."""
    _no_selection("sapo", selected)
    loss = pg_losses.sapo_loss(logp, old_logp, advantages, mask, tau_pos=tau_pos, tau_neg=tau_neg)
    return loss, ppo.ratio_metrics(logp, old_logp, mask)


def gmpo_policy_loss(logp, old_logp, advantages, mask, *, clip_low: float, clip_high: float, selected=None,
                     generator=None):
    """GMPO (``pg_losses.gmpo_loss``): geometric mean of the clipped token ratios; ``clipfrac`` = fraction
    of tokens whose clipped log-ratio was taken."""
    _no_selection("gmpo", selected)
    loss, took_clip = pg_losses.gmpo_loss(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high)
    metrics = ppo.ratio_metrics(logp, old_logp, mask)
    metrics["clipfrac"] = masked_mean(took_clip.float(), _bool(mask))
    return loss, metrics


POLICY_LOSSES: dict[str, PolicyLoss] = {
    "gspo": PolicyLoss(fn=gspo_policy_loss),
    "cispo": PolicyLoss(fn=cispo_policy_loss),
    "sapo": PolicyLoss(fn=sapo_policy_loss),
    "gmpo": PolicyLoss(fn=gmpo_policy_loss),
    "clip": PolicyLoss(fn=clip_policy_loss),
    "clip_cov": PolicyLoss(fn=clip_cov_policy_loss, select=clip_cov_pool_select),
    "kl_cov": PolicyLoss(fn=kl_cov_policy_loss, select=kl_cov_pool_select, zero_without_advantage=False),
}


# --------------------------------------------------------------------------------------------
# Token selectors
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenSelector:
    """A registered token selector.

    Attributes:
        fn: ``fn(mask, *, entropy=None, old_logp=None, selected=None, **options) -> TokenSelection``.
        select: ``select(mask, *, entropy=None, old_logp=None, **options) -> bool [B, T]`` for
            batch-scope pools; None when the selection is per-token (needs no pool).
        requires: per-token tensors ``fn`` reads: a subset of {"entropy", "old_logp"}.
    """

    fn: Callable[..., select.TokenSelection]
    select: Callable[..., Tensor] | None = None
    requires: frozenset[str] = frozenset()

    def __call__(self, *args: Any, **kwargs: Any) -> select.TokenSelection:
        return self.fn(*args, **kwargs)

    def needs_pool(self, options: Mapping[str, Any]) -> bool:
        """True when the loop must compute ``selected`` on the batch pool (``scope="batch"``)."""
        return self.select is not None and _check_scope(options["scope"]) == "batch"


def select_all(
    mask: Tensor, *, entropy: Tensor | None = None, old_logp: Tensor | None = None, selected: Tensor | None = None
) -> select.TokenSelection:
    """Every valid token, counted in the denominators."""
    if selected is not None:
        raise ValueError("token selection 'all' takes no `selected`")
    m = _bool(mask)
    return select.TokenSelection(loss_mask=m, count_mask=m, mask=m)


def select_high_entropy(
    mask: Tensor,
    *,
    top_ratio: float,
    normalize: str,
    scope: str,
    entropy: Tensor | None = None,
    old_logp: Tensor | None = None,
    selected: Tensor | None = None,
) -> select.TokenSelection:
    """Top-⌈ρN⌉ entropy tokens (``select.high_entropy_mask``)."""
    _check_selected("high_entropy", scope, selected)
    if selected is None:
        selected = high_entropy_pool_select(
            mask, top_ratio=top_ratio, normalize=normalize, scope=scope, entropy=entropy
        )
    return select.make_selection(mask, selected, normalize)


def high_entropy_pool_select(
    mask: Tensor,
    *,
    top_ratio: float,
    normalize: str,
    scope: str,
    entropy: Tensor | None = None,
    old_logp: Tensor | None = None,
) -> Tensor:
    """``select.high_entropy_mask`` with the selector's options (``normalize`` unused here)."""
    _check_scope(scope)
    if entropy is None:
        raise ValueError("token selection 'high_entropy' needs `entropy`")
    return select.high_entropy_mask(entropy, mask, top_ratio=top_ratio)


def select_prob_mask(
    mask: Tensor,
    *,
    threshold: float,
    normalize: str,
    entropy: Tensor | None = None,
    old_logp: Tensor | None = None,
    selected: Tensor | None = None,
) -> select.TokenSelection:
    """SPO's probability mask (``select.prob_mask``); per token, so it needs no pool."""
    if selected is not None:
        raise ValueError("token selection 'prob_mask' is per-token; do not pass `selected`")
    if old_logp is None:
        raise ValueError("token selection 'prob_mask' needs `old_logp`")
    return select.make_selection(mask, select.prob_mask(old_logp, mask, threshold=threshold), normalize)


TOKEN_SELECTORS: dict[str, TokenSelector] = {
    "all": TokenSelector(fn=select_all),
    "high_entropy": TokenSelector(
        fn=select_high_entropy, select=high_entropy_pool_select, requires=frozenset({"entropy"})
    ),
    "prob_mask": TokenSelector(fn=select_prob_mask, requires=frozenset({"old_logp"})),
}


# --------------------------------------------------------------------------------------------
REGISTRIES: dict[str, Mapping[str, Any]] = {
    "advantage": ADVANTAGE_ESTIMATORS,
    "policy_loss": POLICY_LOSSES,
    "token_selection": TOKEN_SELECTORS,
}


def get(registry: str, name: str) -> Any:
    """The entry ``name`` of ``registry`` ("advantage", "policy_loss", "token_selection").

    Raises:
        ValueError: unknown registry or name; the message lists the valid ones.
    """
    if registry not in REGISTRIES:
        raise ValueError(f"unknown registry {registry!r}; valid: {', '.join(sorted(REGISTRIES))}")
    entries = REGISTRIES[registry]
    if name not in entries:
        raise ValueError(f"unknown {registry} {name!r}; valid: {', '.join(sorted(entries))}")
    return entries[name]
