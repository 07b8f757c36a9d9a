"""rltrain.algos.dpo against hand-derived numbers and invariants."""
from __future__ import annotations

import math

import pytest
import torch

from rltrain.algos.dpo import dpo_loss


def _t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5])
def test_loss_is_ln2_when_policy_equals_reference(beta):
    """h = 0 ⇒ −log σ(0) = ln 2 for every pair and every β; both rewards are 0."""
    lp = _t(-3.0, -10.0, -0.5)
    lr = _t(-4.0, -1.0, -7.0)
    losses, cr, rr = dpo_loss(lp, lr, lp.clone(), lr.clone(), beta=beta)
    assert torch.allclose(losses, torch.full((3,), math.log(2), dtype=torch.float64))
    assert torch.equal(cr, torch.zeros(3, dtype=torch.float64)) and torch.equal(rr, torch.zeros(3, dtype=torch.float64))


def test_sigmoid_hand():
    """β = 0.1, policy (−1, −3), reference (−2, −2): h = 2, βh = 0.2,
    L = log(1 + e^−0.2) = 0.598139; chosen reward 0.1·(−1 + 2) = 0.1, rejected 0.1·(−3 + 2) = −0.1."""
    losses, cr, rr = dpo_loss(_t(-1.0), _t(-3.0), _t(-2.0), _t(-2.0), beta=0.1)
    assert losses.item() == pytest.approx(math.log1p(math.exp(-0.2)), rel=1e-12)
    assert losses.item() == pytest.approx(0.598139, abs=1e-6)
    assert cr.item() == pytest.approx(0.1) and rr.item() == pytest.approx(-0.1)


def test_label_smoothing_hand():
    """cDPO ε = 0.1, βh = 0.2: 0.9·log(1 + e^−0.2) + 0.1·log(1 + e^0.2) = 0.9·0.598139 + 0.1·0.798139
    = 0.618139."""
    losses, _, _ = dpo_loss(_t(-1.0), _t(-3.0), _t(-2.0), _t(-2.0), beta=0.1, label_smoothing=0.1)
    assert losses.item() == pytest.approx(0.618139, abs=1e-6)


def test_ipo_hand():
    """IPO, β = 0.1: (h − 1/(2β))² = (2 − 5)² = 9 (h is not multiplied by β)."""
    losses, _, _ = dpo_loss(_t(-1.0), _t(-3.0), _t(-2.0), _t(-2.0), beta=0.1, loss_type="ipo")
    assert losses.item() == pytest.approx(9.0)


def test_reference_free_hand():
    """Reference margin (−1) − (−4) = 3: with the reference h = 2 − 3 = −1, L = log(1 + e^{0.1});
    reference-free h = 2, L = log(1 + e^{−0.2}). Rewards still use the reference."""
    args = (_t(-1.0), _t(-3.0), _t(-1.0), _t(-4.0))
    with_ref, cr, rr = dpo_loss(*args, beta=0.1)
    free, cr_free, rr_free = dpo_loss(*args, beta=0.1, reference_free=True)
    assert with_ref.item() == pytest.approx(math.log1p(math.exp(0.1)))
    assert free.item() == pytest.approx(math.log1p(math.exp(-0.2)))
    assert cr_free.item() == pytest.approx(0.0) and rr_free.item() == pytest.approx(0.1)


def test_rewards_are_detached_and_loss_has_gradient():
    pc = _t(-1.0, -2.0).requires_grad_()
    losses, cr, rr = dpo_loss(pc, _t(-3.0, -1.0), _t(-2.0, -2.0), _t(-2.0, -2.0), beta=0.2)
    assert not cr.requires_grad and not rr.requires_grad
    losses.sum().backward()
    # dL/dpc = −β·σ(−βh): h = (1, −1) + ... = [2−0, −1−0] → βh = [0.4, −0.2]
    expected = -0.2 * torch.sigmoid(-0.2 * _t(2.0, -1.0))
    assert torch.allclose(pc.grad, expected)


@pytest.mark.parametrize("loss_type,ls", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)])
def test_gradcheck(loss_type, ls):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    assert torch.autograd.gradcheck(
        lambda a, b, c, d: dpo_loss(a, b, c, d, beta=0.3, loss_type=loss_type, label_smoothing=ls)[0], xs
    )


def test_invalid_arguments():
    x = _t(0.0)
    with pytest.raises(ValueError, match="sigmoid, ipo"):
        dpo_loss(x, x, x, x, beta=0.1, loss_type="hinge")
    with pytest.raises(ValueError):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError):
        dpo_loss(x, x, x, x, beta=0.1, label_smoothing=0.5)
    with pytest.raises(ValueError):
        dpo_loss(x, x, x, x, beta=0.1, loss_type="ipo", label_smoothing=0.1)


