"""PGObjective against numbers derived by hand (the docstring's formula, term by term)."""
import math

import pytest
import torch

from rltrain.algos import registry
from rltrain.algos.objective import PGObjective
from rltrain.algos.select import TokenSelection

CLIP = registry.get("policy_loss", "clip")
OPTS = {"clip_low": 0.2, "clip_high": 0.2, "dual_clip": None}


def _inputs():
    # 2 sequences x 2 positions; row 1 has one valid token.
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.9]])).requires_grad_()
    old = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.9]]))  # ratios 1, 0.5 | 2, (pad)
    adv = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    return logp, old, adv, mask


RUN_CONSTANTS = ("agg_mode", "agg_constant", "kl_coef", "kl_estimator", "entropy_coef", "early_stop_ratio")


def _objective(logp, old, adv, mask, *, loss_mask, count_mask, num_tokens, num_seqs, **kw):
    """``PGObjective`` of the clip loss built from the run-constant keywords, called with the rest."""
    run = {"agg_mode": "token-mean", **{k: kw.pop(k) for k in RUN_CONSTANTS if k in kw}}
    tokens = TokenSelection(loss_mask=loss_mask, count_mask=count_mask, mask=mask)
    counts = torch.tensor([num_tokens, num_seqs], dtype=torch.float64)
    return PGObjective(CLIP, OPTS, **run)(logp, old, adv, tokens, counts, **kw)


def _call(**kw):
    logp, old, adv, mask = _inputs()
    base = dict(loss_mask=mask, count_mask=mask, num_tokens=3.0, num_seqs=2.0)
    base.update(kw)
    return _objective(logp, old, adv, mask, **base)


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
    loss, m = _call(ref_logp=old, kl_coef=0.5, kl_estimator="k1")
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
    loss, _ = _objective(logp, old, adv, mask, loss_mask=sel, count_mask=mask, num_tokens=3.0, num_seqs=2.0)
    loss.backward()
    # d/dlogp of −r·A at r = 1, A = 1 is −1, divided by 3 tokens; elsewhere 0
    torch.testing.assert_close(logp.grad, torch.tensor([[-1 / 3, 0.0], [0.0, 0.0]]))


def test_every_term_shares_the_selection_denominator_by_hand():
    """``normalize=selected`` (count mask = selection): the policy loss, the KL and the entropy bonus
    are each a sum over the selected tokens divided by the same count (issue 31).

    The issue's constructed check: one response of 4 tokens, each with entropy 0.1, one selected,
    no advantage, c_H = 1. The bonus is the mean entropy of the counted tokens, 0.1; summing it
    over all 4 tokens and dividing by the 1 selected gave 0.4.

    The full objective on ``_inputs`` with the selection {(0, 0), (1, 0)} (N_tok = 2, N_seq = 2):
      policy loss: tokens (r = 1, A = 1) → −1 and (r = 2, A = −1) → 2: (−1 + 2) / 2 = 0.5
      k1 KL to π_ref = π_old: δ = log 0.5 − log 0.5 = 0 and log 0.5 − log 0.25 = ln 2: (0 + ln 2) / 2
      entropy [[1, 2], [3, 9]] on the selected tokens: (1 + 3) / 2 = 2
      loss = 0.5 + 0.5 · ln2 / 2 − 0.1 · 2 = 0.4733
    (before: the KL averaged over all 3 response tokens, (0 − ln 2 + ln 2) / 3 = 0, and the bonus was
    (1 + 2 + 3) / 2 = 3: loss 0.5 − 0.3 = 0.2).
    """
    mask = torch.ones(1, 4, dtype=torch.bool)
    sel = torch.tensor([[False, True, False, False]])
    zero = torch.zeros(1, 4)
    loss, _ = _objective(zero.clone().requires_grad_(), zero, zero, mask, loss_mask=sel, count_mask=sel, num_tokens=1.0,
                         num_seqs=1.0, entropy=torch.full((1, 4), 0.1), entropy_coef=1.0)
    assert loss.item() == pytest.approx(-0.1, abs=1e-6)

    logp, old, adv, mask = _inputs()
    sel = torch.tensor([[True, False], [True, False]])
    ent = torch.tensor([[1.0, 2.0], [3.0, 9.0]], requires_grad=True)
    loss, m = _call(loss_mask=sel, count_mask=sel, num_tokens=2.0, num_seqs=2.0, ref_logp=old, kl_coef=0.5,
                    kl_estimator="k1", entropy=ent, entropy_coef=0.1)
    assert loss.item() == pytest.approx(0.5 + 0.5 * math.log(2) / 2 - 0.1 * 2, abs=1e-6)
    assert m["kl"].item() == pytest.approx(0.0, abs=1e-6)  # the logged KL: all 3 response tokens, (0 − ln2 + ln2)/3
    loss.backward()
    torch.testing.assert_close(ent.grad, torch.tensor([[-0.05, 0.0], [-0.05, 0.0]]))  # unselected: no gradient
    # seq-mean-token-mean: one selected token per row, so each row's mean is that token: the same numbers
    loss, _ = _call(loss_mask=sel, count_mask=sel, num_tokens=2.0, num_seqs=2.0, agg_mode="seq-mean-token-mean",
                    ref_logp=old, kl_coef=0.5, kl_estimator="k1", entropy=ent.detach(), entropy_coef=0.1)
    assert loss.item() == pytest.approx(0.5 + 0.5 * math.log(2) / 2 - 0.1 * 2, abs=1e-6)
