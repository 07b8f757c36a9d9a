"""Registries of the algorithm pieces a config names: one per kind, each entry registered by a
decorator next to its function (verl's ``@register_policy_loss``), one signature per registry.

A config group option's ``name`` picks the entry (``get(kind, name)`` or ``REGISTRY[name]``); its
other fields are exactly the entry's keyword options, and the option's schema is derived from them
(``config.algo.registered_schemas``: each option's default is the function's, its check the entry's
``checks``), so adding a policy loss is one registered function and one ``conf/policy_loss/*.yaml``.
Unknown names fail listing the valid ones. The loops call every entry through the signature of its
registry and never branch on a name; what differs between entries is data on the entry
(``select``, ``requires``, ``needs_pool``, ``kl_in_reward``, ``whiten``).

1. ``POLICY_LOSSES`` (``policy_loss=``, ``@register_policy_loss``) — a ``PolicyLoss``; calling it runs
       fn(logp, old_logp, advantages, mask, *, selected=None, generator=None, **options)
           -> (loss_mat [B, T], metrics: dict[str, 0-d detached Tensor])
       clip (ppo), clip_cov and kl_cov (entropy), gspo, cispo, sapo and gmpo (pg_losses).
   ``mask`` is the *response* mask (all valid tokens); token selection is applied afterwards.
   Metrics: ratio_mean, ratio_max, approx_kl (every loss), clipfrac (clip, clip_cov, gspo, cispo, gmpo),
   selected_frac (clip_cov, kl_cov) — over this call's valid tokens (weight by the micro-batch's
   token count when averaging over micro-batches). ReaLHF/SPO's early stop ("mean ratio > x ⇒
   loss × 0") reads ``metrics["ratio_mean"]``.

2. ``TOKEN_SELECTORS`` (``token_selection=``, ``@register_token_selection``, in ``select``) — a
   ``TokenSelector``; calling it runs
       fn(mask, *, entropy=None, old_logp=None, selected=None, **options) -> select.TokenSelection
       all, high_entropy (requires entropy), prob_mask (requires old_logp).
   ``requires`` names the per-token tensors the loop must compute and pass.

3. ``ADV_ESTIMATORS`` (``algo.adv_estimator=``, ``@register_adv_estimator``, in ``grpo``) — an
   ``AdvEstimator``; ``entry.fn`` runs
       fn(scores [N], mask [N, T], *, group_size, kl, kl_coef, scale, eps, std_ddof) -> advantages [N, T]
       grpo, rloo, reinforce_pp, reinforce_pp_baseline.

Batch-wide selection protocol (decisions 1 and 7 in docs/algorithms.md), identical for policy losses
and token selectors. The pool is one optimizer step's batch: all its micro-batches on all ranks. When
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

The loss of one micro-batch is ``objective.PGObjective``'s; summed over micro-batches with the
global denominators it is exactly the full-batch loss (``core.aggregate``).
"""
from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rltrain.algos.core import _bool, masked_mean

SCOPES = ("batch", "micro_batch")
# Keyword arguments of the registries' signatures that the loop passes: not options.
PROTOCOL_ARGS = frozenset({"selected", "generator", "entropy", "old_logp"})


class Registry:
    """The entries of one kind by name, in registration order; ``register(name, **data)`` is the
    decorator that adds a function (wrapped as ``entry_type(fn, **data)``) and returns it unchanged."""

    def __init__(self, kind: str, entry_type: type):
        self.kind, self.entry_type = kind, entry_type
        self._entries: dict[str, Any] = {}

    def register(self, name: str, **data: Any) -> Callable[[Callable], Callable]:
        def add(fn: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = self.entry_type(fn, **data)
            return fn
        return add

    def __getitem__(self, name: str) -> Any:
        """The entry ``name``; unknown names fail listing the valid ones."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def items(self):
        return self._entries.items()


def options(fn: Callable) -> dict[str, tuple[Any, Any]]:
    """``{option: (type, default)}``: the keyword-only parameters of a registered function other
    than the registry's protocol arguments (``PROTOCOL_ARGS``). Each needs a default: it is the
    config's default."""
    hints = typing.get_type_hints(fn)
    out = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not p.KEYWORD_ONLY or p.name in PROTOCOL_ARGS:
            continue
        if p.default is p.empty:
            raise TypeError(f"{fn.__qualname__}: option {p.name!r} needs a default (the config's default)")
        out[p.name] = (hints[p.name], p.default)
    return out


class _Selecting:
    """What a policy loss and a token selector share: calling the entry calls ``fn``; ``select`` (or
    None) is its batch-pool selection."""

    fn: Callable[..., Any]
    select: Callable[..., Tensor] | None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def needs_pool(self, options: Mapping[str, Any]) -> bool:
        """True when the loop must compute ``selected`` on the batch pool (``scope="batch"``)."""
        return self.select is not None and check_scope(options["scope"]) == "batch"


@dataclass(frozen=True)
class PolicyLoss(_Selecting):
    """A registered policy loss.

    Attributes:
        fn: ``fn(logp, old_logp, advantages, mask, *, selected=None, generator=None, **options)
            -> (loss_mat [B, T], metrics)``; its keyword options with their defaults are the
            ``policy_loss`` config's fields.
        select: ``select(logp, old_logp, advantages, mask, *, generator=None, **options)
            -> bool [B, T]``, the selection ``fn`` accepts as ``selected``; None when the loss
            selects nothing.
        zero_without_advantage: a sequence whose advantages are all 0 has loss 0 and gradient 0
            whatever its log-probs, so the loop may skip its forward and backward (True for the
            clipped surrogates; False for KL-Cov, whose penalty does not vanish with A = 0).
        checks: per option, its valid range (a ``config.fields.bounded`` rule such as ``"≥ 0"``)
            or its tuple of valid values.
    """

    fn: Callable[..., tuple[Tensor, dict[str, Tensor]]]
    select: Callable[..., Tensor] | None = None
    zero_without_advantage: bool = True
    checks: Mapping[str, str | tuple] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenSelector(_Selecting):
    """A registered token selector.

    Attributes:
        fn: ``fn(mask, *, entropy=None, old_logp=None, selected=None, **options) -> TokenSelection``;
            its keyword options with their defaults are the ``token_selection`` config's fields.
        select: ``select(mask, *, entropy=None, old_logp=None, **options) -> bool [B, T]`` for
            batch-scope pools; None when the selection is per-token (needs no pool).
        requires: per-token tensors ``fn`` reads: a subset of {"entropy", "old_logp"}.
        checks: per option, its valid range or tuple of valid values (as ``PolicyLoss.checks``).
    """

    fn: Callable[..., Any]
    select: Callable[..., Tensor] | None = None
    requires: frozenset[str] = frozenset()
    checks: Mapping[str, str | tuple] = field(default_factory=dict)


@dataclass(frozen=True)
class AdvEstimator:
    """A registered ``algo.adv_estimator``.

    Attributes:
        fn: ``fn(scores [N], mask [N, T], *, group_size, kl, kl_coef, scale, eps, std_ddof)
            -> advantages [N, T]``; it ignores the arguments it does not use (``scale``/``eps``/
            ``std_ddof`` are GRPO's).
        kl_in_reward: β = ``kl_coef`` is a k1 penalty folded into the token rewards. With a
            reference the loop passes ``kl`` = k1(π_old, π_ref) ``[N, T]``, so it needs π_old's
            log-probs (training forward) and the reference's, and adds no KL loss term. False: the
            entry ignores ``kl`` and β weights a KL loss against the reference instead.
        whiten: the advantages are whitened over the valid tokens of the global batch (moments
            summed across ranks): the estimator's own normalisation, whatever ``algo.adv_whiten``.
    """

    fn: Callable[..., Tensor]
    kl_in_reward: bool = False
    whiten: bool = False


POLICY_LOSSES = Registry("policy_loss", PolicyLoss)
TOKEN_SELECTORS = Registry("token_selection", TokenSelector)
ADV_ESTIMATORS = Registry("algo.adv_estimator", AdvEstimator)
register_policy_loss = POLICY_LOSSES.register
register_token_selection = TOKEN_SELECTORS.register
register_adv_estimator = ADV_ESTIMATORS.register

REGISTRIES: dict[str, Registry] = {"policy_loss": POLICY_LOSSES, "token_selection": TOKEN_SELECTORS,
                                   "adv_estimator": ADV_ESTIMATORS}


def get(kind: str, name: str) -> Any:
    """The entry ``name`` of registry ``kind`` ("policy_loss", "token_selection", "adv_estimator").

    Raises:
        ValueError: unknown kind or name; the message lists the valid ones.
    """
    if kind not in REGISTRIES:
        raise ValueError(f"unknown registry {kind!r}; valid: {', '.join(sorted(REGISTRIES))}")
    return REGISTRIES[kind][name]


# --------------------------------------------------------------------------- helpers of the entries


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; valid: {', '.join(SCOPES)}")
    return scope


def check_selected(name: str, scope: str, selected: Tensor | None) -> None:
    """``selected`` given exactly when ``scope="batch"`` (the batch-pool protocol above)."""
    check_scope(scope)
    if scope == "batch" and selected is None:
        raise ValueError(
            f"{name} with scope='batch' needs `selected` computed on the batch pool with the entry's `select`"
        )
    if scope == "micro_batch" and selected is not None:
        raise ValueError(f"{name} with scope='micro_batch' selects locally; do not pass `selected`")


def no_selection(name: str, selected: Tensor | None) -> None:
    """An entry that selects nothing refuses a ``selected``."""
    if selected is not None:
        raise ValueError(f"{name!r} selects no tokens; do not pass `selected`")


def selected_frac(selected: Tensor, mask: Tensor) -> Tensor:
    """Fraction of the valid tokens that are selected (0-d float32)."""
    m = _bool(mask)
    return masked_mean((_bool(selected) & m).to(torch.float32), m)
