"""pg_objective against numbers derived by hand (the docstring's formula, term by term)."""
import math

import pytest
import torch

from rltrain.algos import registry
from rltrain.algos.objective import pg_objective

CLIP = registry.get("policy_loss", "clip")
OPTS = {"clip_low": 0.2, "clip_high": 0.2, "dual_clip": None}


def _inputs():
    # 2 sequences x 2 positions; row 1 has one valid token.
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.9]])).requires_grad_()
    old = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.9]]))  # ratios 1, 0.5 | 2, (pad)
    adv = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    return logp, old, adv, mask


def _call(**kw):
    logp, old, adv, mask = _inputs()
    base = dict(policy_loss=CLIP, loss_options=OPTS, loss_mask=mask, count_mask=mask, agg_mode="token-mean",
                agg_constant=None, num_tokens=3.0, num_seqs=2.0)
    base.update(kw)
    return pg_objective(logp, old, adv, mask, **base)


def test_clipped_surrogate_token_mean_by_hand():
    # per token: -min(r·A, clip(r)·A): r=1,A=1 → -1; r=0.5,A=1 → -min(0.5, 0.8) = -0.5;
    # r=2,A=-1 → -min(-2, -1.2) = 2. token-mean over 3 tokens: (−1 − 0.5 + 2) / 3 = 1/6.
    loss, m = _call()
    assert loss.item() == pytest.approx(1 / 6, abs=1e-6)
    assert m["ratio_mean"].item() == pytest.approx((1 + 0.5 + 2) / 3, abs=1e-6)


def test_selection_weight_kl_entropy_and_early_stop_by_hand():
    logp, old, adv, mask = _inputs()
    sel = torch.tensor([[True, False], [True, False]])  # drop the (r = 0.5) token from the gradient
    loss, _ = _call(loss_mask=sel)
    assert loss.item() == pytest.approx((-1 + 2) / 3, abs=1e-6)  # still divided by the 3 counted tokens
    w = torch.tensor([[2.0, 1.0], [0.5, 1.0]])  # rollout-correction weight
    loss, _ = _call(token_weight=w)
    assert loss.item() == pytest.approx((-2 - 0.5 + 1) / 3, abs=1e-6)
    # k1 KL to a reference equal to old: log π − log π_ref = 0, log 0.5, log 2 → mean over 3 tokens
    loss, m = _call(ref_logp=old, kl_coef=0.5, kl_estimator="k1", kl_num_tokens=3.0, kl_num_seqs=2.0)
    kl = (0 + math.log(0.5) + math.log(2)) / 3
    assert loss.item() == pytest.approx(1 / 6 + 0.5 * kl, abs=1e-6) and m["kl"].item() == pytest.approx(kl, abs=1e-6)
    ent = torch.tensor([[1.0, 2.0], [3.0, 9.0]])
    loss, _ = _call(entropy=ent, entropy_coef=0.1)
    assert loss.item() == pytest.approx(1 / 6 - 0.1 * (1 + 2 + 3) / 3, abs=1e-6)
    loss, m = _call(early_stop_ratio=1.1)  # mean ratio 7/6 > 1.1: loss × 0
    assert loss.item() == 0.0 and m["early_stopped"].item() == 1.0
    loss, m = _call(early_stop_ratio=1.2)
    assert loss.item() == pytest.approx(1 / 6, abs=1e-6) and m["early_stopped"].item() == 0.0


def test_gradient_only_through_selected_tokens():
    logp, old, adv, mask = _inputs()
    sel = torch.tensor([[True, False], [False, False]])
    loss, _ = pg_objective(logp, old, adv, mask, policy_loss=CLIP, loss_options=OPTS, loss_mask=sel,
                           count_mask=mask, agg_mode="token-mean", agg_constant=None, num_tokens=3.0, num_seqs=2.0)
    loss.backward()
    # d/dlogp of −r·A at r = 1, A = 1 is −1, divided by 3 tokens; elsewhere 0
    torch.testing.assert_close(logp.grad, torch.tensor([[-1 / 3, 0.0], [0.0, 0.0]]))
