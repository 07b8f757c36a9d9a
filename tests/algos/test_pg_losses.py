"""GSPO, CISPO, SAPO and GMPO against hand-derived values and the invariants of issue #16."""
import math

import pytest
import torch

from rltrain.algos import registry
from rltrain.algos.pg_losses import cispo_loss, gspo_loss, sapo_loss
from rltrain.algos.ppo import clipped_surrogate

MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def test_gspo_equals_token_clip_when_every_token_ratio_of_a_sequence_is_equal():
    old = torch.randn(2, 4)
    shift = torch.tensor([[0.3], [-0.25]])  # ρ = e^0.3 on row 0, e^-0.25 on row 1, for every token
    logp = old + shift
    adv = torch.tensor([[1.5], [-0.7]]).expand(2, 4)
    for lo, hi in [(0.2, 0.2), (0.2, 0.28), (0.5, 0.5)]:
        want = clipped_surrogate(logp, old, adv, MASK, clip_low=lo, clip_high=hi)
        for level in ("sequence", "token"):
            got, _ = gspo_loss(logp, old, adv, MASK, clip_low=lo, clip_high=hi, level=level)
            torch.testing.assert_close(got, want)


def test_gspo_sequence_ratio_is_the_geometric_mean_hand():
    old = torch.zeros(1, 3)
    logp = torch.tensor([[0.1, 0.2, 0.6]], requires_grad=True)  # mean log-ratio 0.3
    adv = torch.full((1, 3), 2.0)
    loss, clipped = gspo_loss(logp, old, adv, torch.ones(1, 3), clip_low=0.5, clip_high=0.5)
    s = math.exp(0.3)
    torch.testing.assert_close(loss, torch.full((1, 3), -2.0 * s))
    assert not clipped.any()
    loss.mean().backward()  # d/dlogp_t of −2·exp(mean log ρ) = −2·s/3 per token
    torch.testing.assert_close(logp.grad, torch.full((1, 3), -2.0 * s / 3))
    _, clipped = gspo_loss(logp.detach(), old, adv, torch.ones(1, 3), clip_low=3e-4, clip_high=4e-4)
    assert clipped.all()


def test_cispo_gradient_is_reinforce_where_nothing_is_clipped_and_kept_where_clipped():
    old = torch.randn(2, 4)
    logp = (old + 0.05 * torch.randn(2, 4)).requires_grad_()
    adv = torch.randn(2, 4)
    loss = cispo_loss(logp, old, adv, MASK, clip_low=1.0, clip_high=4.0)
    loss.sum().backward()
    ratio = torch.exp(logp.detach() - old)
    torch.testing.assert_close(logp.grad, -(ratio * adv) * MASK)  # ρ·∇log π = ∇π/π_old: REINFORCE's
    # A clipped token still gets gradient (the weight is capped, not zeroed).
    logp2 = (old + 3.0).requires_grad_()  # ρ = e³ > 1 + 4
    cispo_loss(logp2, old, adv, MASK, clip_low=1.0, clip_high=4.0).sum().backward()
    torch.testing.assert_close(logp2.grad, -5.0 * adv * MASK)


def test_sapo_gate_hand_values_and_unit_slope_on_policy():
    old = torch.zeros(1, 2)
    logp = torch.zeros(1, 2, requires_grad=True)
    adv = torch.tensor([[1.0, -1.0]])
    loss = sapo_loss(logp, old, adv, torch.ones(1, 2), tau_pos=1.0, tau_neg=1.05)
    torch.testing.assert_close(loss.detach(), torch.tensor([[-2.0, 2.0 / 1.05]]))  # −σ(0)·4/τ·A
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, -adv)  # f'(1) = 1: REINFORCE on-policy
    far = sapo_loss(torch.tensor([[2.0]]), torch.zeros(1, 1), torch.tensor([[1.0]]), torch.ones(1, 1),
                    tau_pos=1.0, tau_neg=1.05)
    r = math.exp(2.0)
    assert far.item() == pytest.approx(-4.0 / (1 + math.exp(-(r - 1))))


def test_gmpo_hand_values_clip_in_log_space_by_the_advantage_sign():
    """GMPO (Zhao et al. 2025; verl ``geo_mean``), ε_low = ε_high = 0.4, π_old = 1 everywhere, token
    log-ratios l = [0.1, 0.6, −0.8] (a 4th position is padding) on two responses with Â = 2 and −2.

    Â = 2: clip(l) = [0.1, 0.4, −0.4]; min(l, clip(l)) = [0.1, 0.4, −0.8] (only the upside is clipped);
      mean −0.1 → ratio e^−0.1 = 0.9048, loss −2·0.9048 = −1.8097 on each valid token; gradient of one
      copy w.r.t. l: −2·e^−0.1/3 = −0.6032 on tokens 0 and 2, 0 on the clipped token 1.
    Â = −2: max(l, clip(l)) = [0.1, 0.6, −0.4] (only the downside is clipped); mean 0.1 → e^0.1 = 1.1052,
      loss 2.2103; gradient 2·e^0.1/3 = 0.7368 on tokens 0 and 1, 0 on token 2.
    The arithmetic mean of the clipped token terms (GRPO's clip, ρ ∈ [0.8, 1.2]) would give −2·(1.1052 +
    1.2 + 0.4493)/3 = −1.8364 for the first response.
    """
    from rltrain.algos.pg_losses import gmpo_loss

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    l = torch.tensor([[0.1, 0.6, -0.8, 5.0], [0.1, 0.6, -0.8, 5.0]], requires_grad=True)
    adv = torch.tensor([[2.0], [-2.0]]).expand(2, 4)
    loss, took_clip = gmpo_loss(l, torch.zeros(2, 4), adv, mask, clip_low=0.4, clip_high=0.4)
    lo, hi = -2 * math.exp(-0.1), 2 * math.exp(0.1)
    torch.testing.assert_close(loss.detach(), torch.tensor([[lo, lo, lo, 0.0], [hi, hi, hi, 0.0]]))
    assert took_clip.tolist() == [[False, True, False, False], [False, False, True, False]]
    (loss[0, 0] + loss[1, 0]).backward()  # one copy of each response's loss
    g0, g1 = -2 * math.exp(-0.1) / 3, 2 * math.exp(0.1) / 3
    torch.testing.assert_close(l.grad, torch.tensor([[g0, 0.0, g0, 0.0], [g1, g1, 0.0, 0.0]]))
    spec = registry.get("policy_loss", "gmpo")
    _, metrics = spec(l.detach(), torch.zeros(2, 4), adv, mask, clip_low=0.4, clip_high=0.4)
    assert metrics["clipfrac"].item() == pytest.approx(2 / 6)


def test_gmpo_on_policy_is_the_sequence_policy_gradient():
    """π_θ = π_old: every ratio is 1, the loss is −Â on each token and the gradient of one response's
    loss is −Â/|o| per token (the geometric mean's derivative)."""
    from rltrain.algos.pg_losses import gmpo_loss

    logp = torch.randn(2, 4, requires_grad=True)
    adv = torch.tensor([[1.5], [-0.5]]).expand(2, 4)
    loss, took_clip = gmpo_loss(logp, logp.detach(), adv, MASK, clip_low=0.4, clip_high=0.4)
    torch.testing.assert_close(loss.detach(), -adv * MASK)
    assert not took_clip.any()
    (loss[0, 0] + loss[1, 0]).backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.5, -0.5, -0.5, 0.0], [0.25, 0.25, 0.0, 0.0]]))


@pytest.mark.parametrize("name,opts", [("gspo", {"clip_low": 3e-4, "clip_high": 4e-4}),
                                       ("cispo", {"clip_low": 1.0, "clip_high": 4.0}),
                                       ("sapo", {"tau_pos": 1.0, "tau_neg": 1.05}),
                                       ("gmpo", {"clip_low": 0.4, "clip_high": 0.4})])
def test_registered_with_metrics_and_zero_without_advantage(name, opts):
    spec = registry.get("policy_loss", name)
    assert spec.zero_without_advantage and spec.select is None
    logp = torch.randn(2, 4, requires_grad=True)
    loss, metrics = spec(logp, logp.detach(), torch.zeros(2, 4), MASK, **opts)
    assert torch.equal(loss.detach(), torch.zeros(2, 4))
    assert metrics["ratio_mean"].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="selects no tokens"):
        spec(logp, logp.detach(), torch.zeros(2, 4), MASK, selected=MASK.bool(), **opts)
