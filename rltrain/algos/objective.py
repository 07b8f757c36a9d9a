"""The policy-gradient objective of one micro-batch, as one pure function (torchtune
``rlhf/loss/ppo.py`` style): per-token policy loss → optional per-token weight → token selection
→ aggregation with the step's global denominators → KL term → entropy bonus → early stop.

GRPO, SPO and PPO's actor all train through it (``rltrain.loops.pg``). ``PGObjective`` holds what is
constant for a run (the policy loss and its options, the aggregation, β, c_H, the early-stop ratio:
built once from the config at setup, as torchtune's ``PPOLoss`` holds its ε); calling it with one
micro-batch's tensors gives that micro-batch's loss. What differs between policy losses (clip,
clip_cov, kl_cov, ...) is the registry entry held as ``policy_loss``; what differs between token
selections is the ``TokenSelection``'s masks; the objective never branches on a name, so a new
policy loss or a rollout-correction weight (``token_weight``, e.g. truncated importance sampling)
plugs in without touching the loop.

Full loss of a micro-batch (L the per-token policy loss, w the token weight, s the selection
mask, c the count mask, agg = ``core.aggregate``):

    loss = agg(w·L·s, c; N_tok, N_seq) + β·agg(KL(π‖π_ref), c; N_tok, N_seq) − c_H·agg(H, c; N_tok, N_seq)
    loss = 0·loss if early_stop_ratio > 0 and mean ratio > early_stop_ratio   (ReaLHF early stop)

One set of tokens and one denominator for every term: each term is a sum over the count mask c
divided by the same global counts (N_tok, N_seq) of c. With ``normalize=all`` c is the response
mask: the KL and the entropy bonus act on every response token while the policy loss keeps only
the selected ones. With ``normalize=selected`` c is the selection: the whole objective is an
average over the selected tokens, and an unselected token gets no gradient from any term (as in
the 80/20 paper, whose objective has no KL or entropy term). Before issue 31 the entropy bonus
was summed over all tokens but divided by the selected count, and the KL took its own counts.

Summed over micro-batches and ranks this is the full-batch loss for every aggregation mode
(``core.aggregate``'s invariance contract), because the denominators are global.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rltrain.algos.core import aggregate, kl_estimate, masked_mean
from rltrain.algos.select import TokenSelection


@dataclass(frozen=True)
class PGObjective:
    """The policy-gradient objective with its run-constant arguments bound; call it per micro-batch.

    Attributes:
        policy_loss: a registered policy loss (``registry.PolicyLoss``): ``fn(logp, old_logp, adv,
            mask, *, selected, generator, **options) -> (loss_mat [B, T], metrics)``.
        loss_options: that loss's keyword options (the ``policy_loss`` config minus ``name``).
        agg_mode, agg_constant: ``core.aggregate``'s mode and C.
        kl_coef, kl_estimator: β and the estimator of the KL term (``core.kl_estimate``); the term is
            taken when the call passes ``ref_logp``.
        entropy_coef: c_H of the entropy bonus (the loss decreases with entropy).
        early_stop_ratio: > 0: the loss is multiplied by 0 when the mean ratio exceeds it.
    """

    policy_loss: Callable[..., tuple[Tensor, dict[str, Tensor]]]
    loss_options: Mapping[str, Any]
    agg_mode: str
    agg_constant: float | None = None
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    early_stop_ratio: float = 0.0

    def __call__(
        self,
        logp: Tensor,
        old_logp: Tensor,
        advantages: Tensor,
        tokens: TokenSelection,
        counts: Tensor,
        *,
        selected: Tensor | None = None,
        generator: torch.Generator | None = None,
        token_weight: Tensor | None = None,
        ref_logp: Tensor | None = None,
        entropy: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one micro-batch and its detached metrics.

        Args:
            logp: ``[B, T]`` log-probs of the current policy (differentiable).
            old_logp: ``[B, T]`` π_old log-probs (``logp.detach()`` on-policy).
            advantages: ``[B, T]``.
            tokens: the micro-batch's masks, bool ``[B, T]`` each: ``mask`` (valid response tokens,
                what the policy loss sees), ``loss_mask`` (tokens that get policy gradient) and
                ``count_mask`` (the tokens every term is taken over and counted in the denominators;
                ⊆ ``mask``, ⊇ ``loss_mask``).
            counts: ``[num_tokens, num_seqs]``, the global counts of ``count_mask``
                (``core.aggregate_counts`` summed over the optimizer step's micro-batches and ranks):
                the one denominator of every term.
            selected: ``[B, T]`` bool, this micro-batch's slice of a batch-wide policy-loss selection
                (Clip-Cov / KL-Cov with ``scope=batch``), else None.
            generator: passed to the policy loss (random tie-breaking).
            token_weight: ``[B, T]`` detached per-token multiplier of the policy loss (rollout
                correction), None = 1.
            ref_logp: ``[B, T]`` reference log-probs; None = no KL term.
            entropy: ``[B, T]`` differentiable entropy (needed when ``entropy_coef`` ≠ 0).

        Returns:
            ``(loss, metrics)``: the scalar loss and 0-d detached tensors — the policy loss's own
            (ratio_mean, approx_kl, clipfrac, ...), plus ``kl`` (mean KL over ``mask``) with a
            reference and ``early_stopped`` (0./1.) with ``early_stop_ratio`` > 0.
        """
        mask, count_mask = tokens.mask, tokens.count_mask
        extra = {} if selected is None else {"selected": selected}
        loss_mat, metrics = self.policy_loss(logp, old_logp, advantages, mask, generator=generator, **extra,
                                             **self.loss_options)  # [B, T]
        metrics = dict(metrics)
        if token_weight is not None:
            loss_mat = loss_mat * token_weight
        loss_mat = loss_mat.masked_fill(~tokens.loss_mask, 0.0)  # unselected tokens: no gradient
        loss = self._aggregate(loss_mat, count_mask, counts)
        if ref_logp is not None:
            kl_mat = kl_estimate(logp, ref_logp, self.kl_estimator)  # [B, T]
            loss = loss + self.kl_coef * self._aggregate(kl_mat, count_mask, counts)
            metrics["kl"] = masked_mean(kl_mat.detach(), mask)
        if self.entropy_coef != 0:
            if entropy is None:
                raise ValueError("PGObjective: entropy_coef != 0 needs a differentiable `entropy`")
            loss = loss - self.entropy_coef * self._aggregate(entropy, count_mask, counts)
        if self.early_stop_ratio > 0:
            stop = float(metrics["ratio_mean"]) > self.early_stop_ratio
            metrics["early_stopped"] = torch.tensor(float(stop))
            loss = loss * 0.0 if stop else loss
        return loss, metrics

    def _aggregate(self, x: Tensor, count_mask: Tensor, counts: Tensor) -> Tensor:
        """``core.aggregate`` of ``x`` ``[B, T]`` over ``count_mask`` with the global ``counts``."""
        return aggregate(x, count_mask, self.agg_mode, self.agg_constant, num_tokens=counts[0], num_seqs=counts[1])
