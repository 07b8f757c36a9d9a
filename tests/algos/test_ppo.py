"""rltrain.algos.ppo against hand-derived numbers and invariants."""
from __future__ import annotations

import math

import pytest
import torch

from rltrain.algos.core import kl_estimate
from rltrain.algos.ppo import (
    AdaptiveKLController,
    FixedKLController,
    RunningValueNorm,
    clip_fraction,
    clipped_surrogate,
    gae,
    ratio_metrics,
    token_rewards,
    value_loss,
)

from .conftest import right_padded_mask


def test_token_rewards_hand():
    """kl_coef 0.1: r = −0.1·kl on valid tokens; the score goes on the last valid token of the
    finished row only. Row 0 (finished, score 2): [−0.01, −0.02, −0.03 + 2];
    row 1 (truncated, length 2): [−0.05, −0.05, 0] and no score. score_clip 1.5 → 1.47."""
    scores = torch.tensor([2.0, 3.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0]])
    mask = right_padded_mask([3, 2], 3)
    finished = torch.tensor([True, False])
    r = token_rewards(scores, kl, mask, finished, kl_coef=0.1)
    assert torch.allclose(r, torch.tensor([[-0.01, -0.02, 1.97], [-0.05, -0.05, 0.0]]))
    r_clip = token_rewards(scores, kl, mask, finished, kl_coef=0.1, score_clip=1.5)
    assert r_clip[0, 2].item() == pytest.approx(1.47)
    # a row with no valid tokens gets nothing (not a score on column 0)
    empty = token_rewards(scores, kl, right_padded_mask([3, 0], 3), torch.tensor([True, True]), kl_coef=0.1)
    assert torch.equal(empty[1], torch.zeros(3))


def test_gae_hand_finished_truncated_bootstrap():
    """γ = λ = 0.5, r = [0, 0, 1], V = [0.5, 0.4, 0.8].
    Finished (terminal value 0): δ2 = 1 − 0.8 = 0.2, A2 = 0.2; δ1 = 0.5·0.8 − 0.4 = 0, A1 = 0.25·0.2
    = 0.05; δ0 = 0.5·0.4 − 0.5 = −0.3, A0 = −0.3 + 0.25·0.05 = −0.2875; returns A + V.
    Truncated, no bootstrap (V after the end ≈ V2 = 0.8): δ2 = 1 + 0.4 − 0.8 = 0.6, A1 = 0.15,
    A0 = −0.2625. Truncated with bootstrap 2.0: δ2 = 1 + 1 − 0.8 = 1.2, A1 = 0.3, A0 = −0.225."""
    r = torch.tensor([[0.0, 0.0, 1.0]] * 3, dtype=torch.float64)
    v = torch.tensor([[0.5, 0.4, 0.8]] * 3, dtype=torch.float64)
    mask = torch.ones(3, 3, dtype=torch.bool)
    finished = torch.tensor([True, False, False])
    boot = torch.tensor([123.0, 0.8, 2.0], dtype=torch.float64)  # row 0 finished: ignored
    adv, ret = gae(r, v, mask, gamma=0.5, lam=0.5, finished=finished, bootstrap_values=boot)
    expected = torch.tensor(
        [[-0.2875, 0.05, 0.2], [-0.2625, 0.15, 0.6], [-0.225, 0.3, 1.2]], dtype=torch.float64
    )
    assert torch.allclose(adv, expected)
    assert torch.allclose(ret, expected + v)
    adv_nb, _ = gae(r, v, mask, gamma=0.5, lam=0.5, finished=finished)
    assert torch.allclose(adv_nb[1], expected[1])  # default bootstrap = V at the last valid token
    adv_all, _ = gae(r, v, mask, gamma=0.5, lam=0.5)  # finished=None → all finished
    assert torch.allclose(adv_all, expected[0].expand(3, 3))


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    """γ = λ = 1 and finished sequences: A_t = Σ_{k≥t} r_k − V_t (telescoping), per row, with
    padding ignored."""
    g = torch.Generator().manual_seed(0)
    lengths = [5, 2, 0, 4]
    mask = right_padded_mask(lengths, 5)
    r = torch.randn(4, 5, generator=g, dtype=torch.float64)
    v = torch.randn(4, 5, generator=g, dtype=torch.float64)
    adv, ret = gae(r, v, mask, gamma=1.0, lam=1.0)
    rm = torch.where(mask, r, 0.0)
    to_go = rm.flip(-1).cumsum(-1).flip(-1)
    assert torch.allclose(adv, torch.where(mask, to_go - v, 0.0))
    assert torch.allclose(ret, torch.where(mask, to_go, 0.0))


def test_gae_skips_masked_positions_inside_a_row():
    """A hole in the mask is skipped: the result on the valid positions equals GAE on the
    compacted row."""
    r = torch.tensor([[0.3, 9.0, -0.2, 1.0]], dtype=torch.float64)
    v = torch.tensor([[0.1, 9.0, 0.4, -0.3]], dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True]])
    adv, _ = gae(r, v, mask, gamma=0.9, lam=0.8)
    compact, _ = gae(r[:, [0, 2, 3]], v[:, [0, 2, 3]], torch.ones(1, 3, dtype=torch.bool), gamma=0.9, lam=0.8)
    assert torch.allclose(adv[:, [0, 2, 3]], compact)
    assert adv[0, 1].item() == 0.0


def test_on_policy_ratio_one_and_loss_minus_advantage():
    """logp = old_logp ⇒ ρ = 1, the loss is −A, its gradient w.r.t. logp is −A, and the metrics
    are ratio 1, approx-KL 0, clip fraction 0."""
    g = torch.Generator().manual_seed(1)
    old = torch.randn(2, 4, generator=g)
    adv = torch.randn(2, 4, generator=g)
    mask = right_padded_mask([4, 3], 4)
    logp = old.clone().requires_grad_()
    loss = clipped_surrogate(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert torch.allclose(loss, torch.where(mask, -adv, 0.0))
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.where(mask, -adv, 0.0))
    m = ratio_metrics(logp, old, mask)
    assert m["ratio_mean"].item() == 1.0 and m["approx_kl"].item() == 0.0
    assert clip_fraction(logp, old, adv, mask, clip_low=0.2, clip_high=0.28).item() == 0.0


def test_clipped_surrogate_hand():
    """clip_low 0.2, clip_high 0.28 (clip-higher):
    A=+1, ρ=1.5: max(−1.5, −1.28) = −1.28 (clipped, gradient 0)
    A=+1, ρ=0.5: max(−0.5, −0.8) = −0.5 (gradient −Aρ = −0.5)
    A=−1, ρ=1.5: max(1.5, 1.28) = 1.5 (gradient 1.5)
    A=−1, ρ=0.5: max(0.5, 0.8) = 0.8 (clipped, gradient 0)
    A=−1, ρ=4: 4, and with dual clip c = 3: min(4, 3) = 3 (gradient 0)."""
    ratio = torch.tensor([[1.5, 0.5, 1.5, 0.5, 4.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, -1.0]], dtype=torch.float64)
    old = torch.zeros(1, 5, dtype=torch.float64)
    mask = torch.ones(1, 5, dtype=torch.bool)
    logp = ratio.log().requires_grad_()
    loss = clipped_surrogate(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert torch.allclose(loss, torch.tensor([[-1.28, -0.5, 1.5, 0.8, 4.0]], dtype=torch.float64))
    dual = clipped_surrogate(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    assert torch.allclose(dual, torch.tensor([[-1.28, -0.5, 1.5, 0.8, 3.0]], dtype=torch.float64))
    dual.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[0.0, -0.5, 1.5, 0.0, 0.0]], dtype=torch.float64))
    frac = clip_fraction(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    # tokens 0 and 3 use the ratio-clipped term; token 4 is capped by the dual clip, not counted
    assert frac.item() == pytest.approx(2 / 5)
    with pytest.raises(ValueError):
        clipped_surrogate(logp, old, adv, mask, clip_low=0.2, clip_high=0.2, dual_clip=1.0)


def test_ratio_metrics_hand():
    """ρ = [2, ½] → mean 1.25, max 2; approx_kl = mean of k3(old → new) = mean(ρ − 1 − ln ρ)
    = ((1 − ln 2) + (−½ + ln 2))/2 = 0.25."""
    logp = torch.tensor([[math.log(2), -math.log(2), 7.0]])
    old = torch.zeros(1, 3)
    mask = torch.tensor([[True, True, False]])
    m = ratio_metrics(logp, old, mask)
    assert m["ratio_mean"].item() == pytest.approx(1.25)
    assert m["ratio_max"].item() == pytest.approx(2.0)
    assert m["approx_kl"].item() == pytest.approx(0.25, abs=1e-6)
    assert m["approx_kl"].item() == pytest.approx(kl_estimate(old[:, :2], logp[:, :2], "k3").mean().item())


def test_clipped_surrogate_gradcheck():
    g = torch.Generator().manual_seed(2)
    logp = (torch.randn(2, 5, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    old = torch.randn(2, 5, generator=g, dtype=torch.float64) * 0.5
    adv = torch.randn(2, 5, generator=g, dtype=torch.float64)
    mask = right_padded_mask([5, 3], 5)
    assert torch.autograd.gradcheck(
        lambda x: clipped_surrogate(x, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0), (logp,)
    )


def test_value_loss_hand():
    """clip 0.2. V = 1.0, V_old = 0.5, R = 2: V_clip = 0.7, max(½·1², ½·1.3²) = 0.845.
    V = 1.9, V_old = 1.0, R = 2: V_clip = 1.2, max(½·0.1², ½·0.8²) = 0.32. Unclipped: 0.005.
    Huber δ = 1, V − R = 3 (no clip): 1·(3 − ½) = 2.5."""
    v = torch.tensor([[1.0, 1.9]], dtype=torch.float64)
    v_old = torch.tensor([[0.5, 1.0]], dtype=torch.float64)
    ret = torch.tensor([[2.0, 2.0]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert torch.allclose(value_loss(v, v_old, ret, mask, clip=0.2), torch.tensor([[0.845, 0.32]], dtype=torch.float64))
    assert value_loss(v, v_old, ret, mask, clip=None)[0, 1].item() == pytest.approx(0.005)
    huber = value_loss(torch.tensor([[5.0]]), torch.tensor([[5.0]]), torch.tensor([[2.0]]), torch.ones(1, 1),
                       clip=None, loss_type="huber", huber_delta=1.0)
    assert huber.item() == pytest.approx(2.5)


def test_value_loss_gradcheck():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    v_old = v.detach() + torch.randn(2, 4, generator=g, dtype=torch.float64)
    ret = torch.randn(2, 4, generator=g, dtype=torch.float64)
    mask = right_padded_mask([4, 2], 4)
    assert torch.autograd.gradcheck(lambda x: value_loss(x, v_old, ret, mask, clip=0.3), (v,))


def test_running_value_norm_hand():
    """β = ½. Update with [1, 3] (mean 2, mean of squares 5): debiased mean 2, var 5 − 4 = 1.
    Then with [5, 5]: mean = (½·½·2 + ½·5)/(½·½ + ½) = 4; second moment (½·½·5 + ½·25)/0.75
    = 18.333…, var = 2.333…. normalize/denormalize invert each other."""
    norm = RunningValueNorm(beta=0.5)
    norm.update(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]]))
    assert norm.mean.item() == pytest.approx(2.0) and norm.std.item() == pytest.approx(1.0)
    assert norm.normalize(torch.tensor(3.0)).item() == pytest.approx(1.0)
    norm.update(torch.tensor([[5.0, 5.0]]), torch.ones(1, 2))
    assert norm.mean.item() == pytest.approx(4.0)
    assert norm.std.item() == pytest.approx(math.sqrt(55 / 3 - 16))
    x = torch.tensor([0.3, -2.0])
    assert torch.allclose(norm.denormalize(norm.normalize(x)), x)
    other = RunningValueNorm(beta=0.5)
    other.load_state_dict(norm.state_dict())
    assert other.mean.item() == norm.mean.item() and other.std.item() == norm.std.item()


def test_kl_controllers_hand():
    """target 6, horizon 10000, n = 100: KL 9 → error clipped to 0.2 → ×1.002; KL 3 → −0.2 →
    ×0.998; KL 6.6 → 0.1 → ×1.001. The fixed controller never changes."""
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(9.0, 100) == pytest.approx(0.1 * 1.002)
    assert ctl.update(3.0, 100) == pytest.approx(0.1 * 1.002 * 0.998)
    assert ctl.update(6.6, 100) == pytest.approx(0.1 * 1.002 * 0.998 * 1.001)
    assert FixedKLController(0.1).update(100.0, 100) == 0.1
