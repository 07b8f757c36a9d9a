"""PPO for LLMs: token rewards, GAE, clipped surrogate, clipped value loss (docs/algorithms.md §2).

Papers: Schulman et al. 2017, "Proximal Policy Optimization Algorithms"; Schulman et al. 2016,
"High-Dimensional Continuous Control Using Generalized Advantage Estimation"; Xu et al. 2024,
"Is DPO Superior to PPO for LLM Alignment?" (official system: ReaLHF, ``ppo_functional.py``).
Dual clip: Ye et al. 2020 (verl ``clip_ratio_c``). Adaptive KL: Ziegler et al. 2019.

Alignment: ``values[:, t]`` is V(s_t), the critic's value of the state *before* response
token t (prompt + y_<t), i.e. the critic output at the position whose logits predict token t
(verl's alignment). ``rewards[:, t]`` is the reward for emitting token t.

Terminal handling in ``gae`` (ReaLHF): the value of the state after the last valid token is
    0                          for sequences that finished (ended with EOS),
    the bootstrap value        for truncated sequences: ``bootstrap_values[i]`` when given —
                               the critic at the state *after* the last token, V(s_L), which a
                               loop gets by keeping one more critic position — otherwise
                               ``values`` at the last valid token, i.e. V(s_L) ≈ V(s_{L−1}).
``finished=None`` treats every sequence as finished (verl's convention: no bootstrapping).
Masked positions are skipped: the recursion carries the next value and advantage across them,
so padding anywhere (not only on the right) leaves the result unchanged.

Deviations / decisions:
- Importance ratios use log-ratios clamped to [−20, 20] before ``exp`` (verl; SPO uses ±10),
  computed only on valid tokens.
- The "mean ratio > threshold ⇒ loss × 0" early stop of ReaLHF/SPO is left to the loop, which
  reads ``metrics["ratio_mean"]``.
- ``RunningValueNorm``: exponential moving mean/second moment with debiasing (β = 0.99995,
  ε = 1e-5, ReaLHF); its variance floor ``min_var`` = 1e-2 follows MAPPO's ValueNorm
  [UNCONFIRMED for ReaLHF].
- The ReaLHF score transform (x − bias)·scaling is the reward's job; ``token_rewards`` only
  clips.
"""
from __future__ import annotations

import torch
from torch import Tensor

from rltrain.algos.core import _bool, kl_estimate, masked_mean
from rltrain.algos.registry import no_selection, register_policy_loss

LOG_RATIO_CLAMP = 20.0
VALUE_LOSS_TYPES = ("mse", "huber")


def _zero(x: Tensor) -> Tensor:
    return torch.zeros((), dtype=x.dtype, device=x.device)


def last_valid_index(mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(index [B], has_valid bool [B])``: the last valid position of each row (0 if none)."""
    m = _bool(mask)
    T = m.shape[-1]
    idx = (T - 1) - m.flip(-1).to(torch.int64).argmax(-1)  # [B]
    has_valid = m.any(-1)  # [B]
    return torch.where(has_valid, idx, torch.zeros_like(idx)), has_valid


# --------------------------------------------------------------------------------------------
# Rewards and advantages
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def token_rewards(
    scores: Tensor,
    kl: Tensor,
    mask: Tensor,
    finished: Tensor,
    *,
    kl_coef: float,
    score_clip: float | None = None,
) -> Tensor:
    """PPO token rewards (docs/algorithms.md §2 step 3): r_t = −kl_coef·kl_t, plus the score at the last
    valid token of sequences that finished with EOS (truncated sequences get no score).

    Args:
        scores: ``[B]`` sequence scores from the reward.
        kl: ``[B, T]`` per-token KL of the rollout policy to the reference, normally
            ``kl_estimate(old_logp, ref_logp, "k1")``.
        mask: ``[B, T]`` valid response tokens.
        finished: bool ``[B]``, True where the sequence ended with EOS.
        kl_coef: β of the KL penalty (ReaLHF default 0.1; or ``AdaptiveKLController.value``).
        score_clip: clip scores to ±score_clip first (ReaLHF ``max_reward_clip``); None = no clip.

    Returns:
        ``[B, T]`` detached rewards, 0 on padding.
    """
    m = _bool(mask)
    rewards = torch.where(m, -kl_coef * kl, _zero(kl))  # [B, T]
    s = scores.to(rewards.dtype)
    if score_clip is not None:
        s = s.clamp(-score_clip, score_clip)
    last, has_valid = last_valid_index(m)  # [B], [B]
    add = torch.where(finished.to(torch.bool) & has_valid, s, torch.zeros_like(s))  # [B]
    return rewards.scatter_add(1, last[:, None], add[:, None])


@torch.no_grad()
def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    *,
    gamma: float,
    lam: float,
    finished: Tensor | None = None,
    bootstrap_values: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation, backward over the response.

        δ_t = r_t + γ·V_{next} − V_t,   A_t = δ_t + γλ·A_{next},   returns = A + V
    where "next" is the next *valid* position, and after the last valid token V_next is the
    terminal value described in the module docstring.

    Args:
        rewards: ``[B, T]`` token rewards (``token_rewards``).
        values: ``[B, T]`` V(s_t), denormalised.
        mask: ``[B, T]`` valid response tokens.
        gamma, lam: discount and GAE λ (ReaLHF PPO: 1.0 and 1.0).
        finished: bool ``[B]``; None = all finished.
        bootstrap_values: ``[B]`` V(s_L) for truncated rows (ignored for finished rows); None =
            use ``values`` at the last valid token.

    Returns:
        ``(advantages [B, T], returns [B, T])``, detached, 0 on padding.
    """
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gae: gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    m = _bool(mask)
    r = torch.where(m, rewards, _zero(rewards))  # [B, T]
    v = torch.where(m, values.to(r.dtype), _zero(r))  # [B, T]
    B, T = r.shape
    last, has_valid = last_valid_index(m)
    if finished is None:
        finished = torch.ones(B, dtype=torch.bool, device=r.device)
    if bootstrap_values is None:
        boot = v.gather(1, last[:, None]).squeeze(1)  # [B]
    else:
        boot = bootstrap_values.to(r.dtype)
    next_value = torch.where(finished.to(torch.bool) | ~has_valid, torch.zeros_like(boot), boot)  # [B]
    next_adv = torch.zeros(B, dtype=r.dtype, device=r.device)  # [B]
    adv = torch.zeros_like(r)  # [B, T]
    for t in range(T - 1, -1, -1):
        valid = m[:, t]  # [B]
        delta = r[:, t] + gamma * next_value - v[:, t]
        a_t = delta + gamma * lam * next_adv
        adv[:, t] = torch.where(valid, a_t, torch.zeros_like(a_t))
        next_value = torch.where(valid, v[:, t], next_value)
        next_adv = torch.where(valid, a_t, next_adv)
    returns = torch.where(m, adv + v, _zero(adv))
    return adv, returns


# --------------------------------------------------------------------------------------------
# Policy loss
# --------------------------------------------------------------------------------------------
def importance_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """ρ = exp(clamp(logp − old_logp, ±20)) on valid tokens, exactly 1 on padding. ``[B, T]``."""
    m = _bool(mask)
    log_ratio = torch.where(m, logp - old_logp, _zero(logp)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(log_ratio)


def surrogate_terms(ratio: Tensor, adv: Tensor, *, clip_low: float, clip_high: float) -> tuple[Tensor, Tensor]:
    """The two terms of PPO's clipped surrogate, the one place the clip is written:
    L1 = −A·ρ and L2 = −A·clip(ρ, 1−clip_low, 1+clip_high). The loss is max(L1, L2); a token is
    clipped where L2 > L1 (its gradient is then zero)."""
    return -adv * ratio, -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)


def clipped_surrogate(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None = None,
) -> Tensor:
    """PPO clipped policy loss per token: max(−A·ρ, −A·clip(ρ, 1−clip_low, 1+clip_high)).

    Clip-higher (DAPO) is ``clip_low=0.2, clip_high=0.28``. With ``dual_clip=c`` (> 1) the loss
    of tokens with A < 0 is further capped at −A·c (verl ``clip_ratio_c``, default 3).

    Args:
        logp: ``[B, T]`` log π_θ of the sampled tokens (with grad).
        old_logp: ``[B, T]`` log π_old (rollout policy).
        advantages: ``[B, T]``.
        mask: ``[B, T]`` valid tokens.

    Returns:
        ``[B, T]`` per-token loss, 0 on padding (reduce with ``core.aggregate``).
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    m = _bool(mask)
    adv = torch.where(m, advantages, _zero(advantages))  # [B, T]
    ratio = importance_ratio(logp, old_logp, m)  # [B, T]
    loss = torch.maximum(*surrogate_terms(ratio, adv, clip_low=clip_low, clip_high=clip_high))
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)
    return torch.where(m, loss, _zero(loss))


def clip_fraction(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
) -> Tensor:
    """Fraction of valid tokens whose clipped term is active (−A·clip(ρ) > −A·ρ). 0-d, detached."""
    with torch.no_grad():
        m = _bool(mask)
        adv = torch.where(m, advantages, _zero(advantages))
        ratio = importance_ratio(logp, old_logp, m)
        unclipped, clipped = surrogate_terms(ratio, adv, clip_low=clip_low, clip_high=clip_high)
        return masked_mean((clipped > unclipped).to(ratio.dtype), m)


def ratio_metrics(logp: Tensor, old_logp: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Detached 0-d metrics over valid tokens: ``ratio_mean``, ``ratio_max`` and ``approx_kl``
    (k3 estimate of KL(π_old ‖ π_θ)). On-policy: 1, 1, 0."""
    with torch.no_grad():
        m = _bool(mask)
        ratio = importance_ratio(logp, old_logp, m)
        approx_kl = masked_mean(kl_estimate(old_logp, logp, "k3"), m)
        ratio_max = torch.where(m, ratio, torch.zeros_like(ratio)).max() if m.any() else ratio.new_zeros(())
        return {"ratio_mean": masked_mean(ratio, m), "ratio_max": ratio_max, "approx_kl": approx_kl}


@register_policy_loss("clip", checks={"clip_low": "≥ 0", "clip_high": "≥ 0", "dual_clip": "> 1"})
def clip_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, clip_low: float = 0.2,
                     clip_high: float = 0.2, dual_clip: float | None = None, selected: Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``policy_loss=clip``: PPO / GRPO / DAPO clipped surrogate (``clipped_surrogate``) and its metrics.

    Args:
        clip_low: ε_low, the ratio is clipped below at 1 − clip_low.
        clip_high: ε_high, clipped above at 1 + clip_high (clip-higher, DAPO: 0.28).
        dual_clip: dual-clip constant c (> 1) capping the loss of negative-advantage tokens; None = off.
        selected, generator: unused (the clip selects nothing).
    """
    no_selection("clip", selected)
    loss = clipped_surrogate(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high,
                             dual_clip=dual_clip)
    metrics = ratio_metrics(logp, old_logp, mask)
    metrics["clipfrac"] = clip_fraction(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high)
    return loss, metrics


# --------------------------------------------------------------------------------------------
# Critic
# --------------------------------------------------------------------------------------------
def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip: float | None,
    loss_type: str = "mse",
    huber_delta: float = 10.0,
) -> Tensor:
    """Clipped critic loss per token (ReaLHF ``critic_loss_fn``):

        V_clip = V_old + clip(V − V_old, ±clip)
        L = max(f(V − R), f(V_clip − R)),  f(e) = ½e² (mse) or Huber with δ = huber_delta.

    Args:
        values: ``[B, T]`` new critic values (with grad), in the critic's (normalised) space.
        old_values: ``[B, T]`` critic values at rollout time, same space.
        returns: ``[B, T]`` GAE returns, same space.
        mask: ``[B, T]`` valid tokens.
        clip: ``value_eps_clip`` (ReaLHF 0.2, verl 0.5); None = unclipped ½(V − R)².

    Returns:
        ``[B, T]`` per-token loss, 0 on padding.
    """
    if loss_type not in VALUE_LOSS_TYPES:
        raise ValueError(f"unknown value loss_type {loss_type!r}; valid: {', '.join(VALUE_LOSS_TYPES)}")
    m = _bool(mask)
    z = _zero(values)
    v = torch.where(m, values, z)  # [B, T]
    v_old = torch.where(m, old_values.to(v.dtype), z)
    ret = torch.where(m, returns.to(v.dtype), z)

    def f(err: Tensor) -> Tensor:
        if loss_type == "mse":
            return 0.5 * err * err
        a = err.abs()
        return torch.where(a <= huber_delta, 0.5 * err * err, huber_delta * (a - 0.5 * huber_delta))

    loss = f(v - ret)
    if clip is not None:
        v_clip = v_old + (v - v_old).clamp(-clip, clip)
        loss = torch.maximum(loss, f(v_clip - ret))
    return torch.where(m, loss, z)


class RunningValueNorm:
    """Exponential running mean/std of critic targets (ReaLHF ``value_norm``).

    Update with the returns of each batch; train the critic on ``normalize(returns)`` and
    denormalise its outputs (``denormalize``) before GAE. State is float64.

        μ_acc ← β·μ_acc + (1−β)·mean(x);  s_acc ← β·s_acc + (1−β)·mean(x²);  d ← β·d + (1−β)
        mean = μ_acc / max(d, ε);  var = max(s_acc / max(d, ε) − mean², min_var)
    """

    def __init__(self, beta: float = 0.99995, eps: float = 1e-5, min_var: float = 1e-2) -> None:
        self.beta, self.eps, self.min_var = beta, eps, min_var
        self.mean_acc = torch.zeros((), dtype=torch.float64)
        self.sq_acc = torch.zeros((), dtype=torch.float64)
        self.debias = torch.zeros((), dtype=torch.float64)

    def update(self, x: Tensor, mask: Tensor) -> None:
        """Update from ``x [B, T]`` over valid positions (single process)."""
        m = _bool(mask)
        x64 = torch.where(m, x.detach().double(), torch.zeros((), dtype=torch.float64, device=x.device))
        self.update_from_moments(torch.stack([m.sum().double(), x64.sum(), (x64 * x64).sum()]))

    def update_from_moments(self, moments: Tensor) -> None:
        """Update from ``[count, Σx, Σx²]`` (``core.masked_moments``, all-reduced over ranks)."""
        count, total, total_sq = moments.detach().double().cpu().unbind()
        if count <= 0:
            return
        b = self.beta
        self.mean_acc = b * self.mean_acc + (1 - b) * total / count
        self.sq_acc = b * self.sq_acc + (1 - b) * total_sq / count
        self.debias = b * self.debias + (1 - b)

    @property
    def mean(self) -> Tensor:
        return self.mean_acc / self.debias.clamp(min=self.eps)

    @property
    def std(self) -> Tensor:
        var = self.sq_acc / self.debias.clamp(min=self.eps) - self.mean**2
        return var.clamp(min=self.min_var).sqrt()

    def normalize(self, x: Tensor) -> Tensor:
        return ((x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype))

    def denormalize(self, x: Tensor) -> Tensor:
        return x * self.std.to(x.device, x.dtype) + self.mean.to(x.device, x.dtype)

    def state_dict(self) -> dict[str, Tensor]:
        return {"mean_acc": self.mean_acc, "sq_acc": self.sq_acc, "debias": self.debias}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.mean_acc = state["mean_acc"].double().cpu()
        self.sq_acc = state["sq_acc"].double().cpu()
        self.debias = state["debias"].double().cpu()


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019; ReaLHF target 6, horizon 10000):

        e = clip(current_kl / target − 1, −0.2, 0.2);   value ← value · (1 + e · n_steps / horizon)
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target}, {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """``current_kl``: mean per-sequence KL of the last batch; ``n_steps``: its size."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


class FixedKLController:
    """Constant KL coefficient with the ``AdaptiveKLController`` interface (ReaLHF default 0.1)."""

    def __init__(self, init_kl_coef: float) -> None:
        self.value = float(init_kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

