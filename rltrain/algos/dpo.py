"""DPO, IPO and conservative DPO losses (docs/algorithms.md §1).

Papers: Rafailov et al. 2023, "Direct Preference Optimization" (DPO); Azar et al. 2023,
"A General Theoretical Paradigm to Understand Learning from Human Preferences" (IPO);
Mitchell 2023, "A note on DPO with noisy preferences" (cDPO, label smoothing). Behaviour as in
eric-mitchell/direct-preference-optimization ``trainers.py::preference_loss``.

With h = (log π(y_w) − log π(y_l)) − (log π_ref(y_w) − log π_ref(y_l)):
    sigmoid (DPO/cDPO):  L = −(1−ε)·log σ(β·h) − ε·log σ(−β·h)
    ipo:                 L = (h − 1/(2β))²      (h NOT multiplied by β, as in the reference code)

Inputs are *summed* response log-probs (prompt masked, EOS counted): ``core.masked_sum`` of the
token log-probs. The batch loss is ``losses.mean()`` (the caller reduces).

Deviations / decisions:
- ``label_smoothing`` with ``loss_type="ipo"`` is rejected (the reference code silently ignores
  it).
- IPO uses summed log-probs, as the reference code does; some implementations length-normalise
  (the sources disagree: docs/algorithms.md §1).
- ``reference_free=True`` zeroes the reference log-ratio in the loss; the reported rewards are
  still β·(policy − reference) log-ratios, as in the reference code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


DPO_LOSS_TYPES = ("sigmoid", "ipo")


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    reference_free: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair preference loss and implicit rewards.

    Args:
        policy_chosen_logps: ``[N]`` summed log π_θ(y_w | x).
        policy_rejected_logps: ``[N]`` summed log π_θ(y_l | x).
        ref_chosen_logps: ``[N]`` summed log π_ref(y_w | x).
        ref_rejected_logps: ``[N]`` summed log π_ref(y_l | x).
        beta: β > 0 (the reference code suggests 0.1–0.5).
        loss_type: ``"sigmoid"`` (DPO / cDPO) or ``"ipo"``.
        label_smoothing: cDPO ε ∈ [0, 0.5): the assumed fraction of flipped labels.
        reference_free: use a uniform reference (reference log-ratio 0 in the loss).

    Returns:
        ``(losses [N], chosen_rewards [N], rejected_rewards [N])``; the rewards
        β·(log π − log π_ref) are detached.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; valid: {', '.join(DPO_LOSS_TYPES)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if loss_type == "ipo" and label_smoothing != 0.0:
        raise ValueError("label_smoothing applies to loss_type='sigmoid' only")

    pi_logratios = policy_chosen_logps - policy_rejected_logps  # [N]
    ref_logratios = ref_chosen_logps - ref_rejected_logps  # [N]
    if reference_free:
        ref_logratios = torch.zeros_like(ref_logratios)
    h = pi_logratios - ref_logratios  # [N]

    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        losses = (h - 1.0 / (2.0 * beta)) ** 2

    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()  # [N]
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()  # [N]
    return losses, chosen_rewards, rejected_rewards


