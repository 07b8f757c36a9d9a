"""rltrain.algos.entropy: Clip-Cov and KL-Cov."""
from __future__ import annotations

import math

import pytest
import torch

from rltrain.algos.core import aggregate, aggregate_counts, flatten_valid, unflatten_valid
from rltrain.algos.entropy import (
    clip_cov_loss,
    clip_cov_select,
    kl_cov_loss,
    kl_cov_select,
    select_count,
    token_covariance,
)
from rltrain.algos.ppo import clipped_surrogate

from .conftest import right_padded_mask

# Worked example: 4 valid tokens + 1 padding column holding garbage.
A = torch.tensor([[3.0, 1.0, 0.0, -4.0, 50.0]], dtype=torch.float64)
LOGP = torch.tensor([[-1.0, -2.0, -3.0, -4.0, 9.0]], dtype=torch.float64)
DELTA = torch.tensor([[0.1, -0.2, 0.3, -0.4, -7.0]], dtype=torch.float64)  # logp − old_logp
OLD = LOGP - DELTA
MASK = right_padded_mask([4], 5)


def test_token_covariance_hand():
    """mean A = 0, mean logp = −2.5: (A − 0)·(logp + 2.5) = [3·1.5, 1·0.5, 0·(−0.5), −4·(−1.5)]
    = [4.5, 0.5, 0, 6]; padding 0."""
    cov = token_covariance(LOGP, A, MASK)
    assert torch.allclose(cov, torch.tensor([[4.5, 0.5, 0.0, 6.0, 0.0]], dtype=torch.float64))


def test_kl_cov_hand():
    """N = 4, ratio 0.5 → k = 2: the two largest covariances are tokens 3 (6) and 0 (4.5).
    Loss, β = 1, ρ = e^δ: token 0: −3e^0.1 + 0.1; token 1: −e^−0.2; token 2: 0;
    token 3: 4e^−0.4 + 0.4 (unclipped although ρ = 0.67). ratio 2e-4 → k = max(1, 0) = 1: token 3."""
    sel = kl_cov_select(LOGP, A, MASK, select_ratio=0.5)
    assert sel.tolist() == [[True, False, False, True, False]]
    loss = kl_cov_loss(LOGP, OLD, A, MASK, select_ratio=0.5, kl_coef=1.0)
    e = math.exp
    expected = [-3 * e(0.1) + 0.1, -e(-0.2), 0.0, 4 * e(-0.4) + 0.4, 0.0]
    assert torch.allclose(loss, torch.tensor([expected], dtype=torch.float64))
    assert kl_cov_select(LOGP, A, MASK, select_ratio=2e-4).tolist() == [[False, False, False, True, False]]


def test_kl_cov_penalty_only_on_top_k():
    """Random batch: kl_cov − (−A·ρ) equals β·|logp − old_logp| exactly on the top-k tokens by
    covariance (k = max(1, ⌊N·ratio⌋)) and 0 everywhere else."""
    g = torch.Generator().manual_seed(0)
    mask = right_padded_mask([12, 5, 9, 0], 12)
    logp = -torch.rand(4, 12, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(4, 12, generator=g, dtype=torch.float64)
    adv = torch.randn(4, 12, generator=g, dtype=torch.float64)
    loss = kl_cov_loss(logp, old, adv, mask, select_ratio=0.1, kl_coef=0.5)
    plain = torch.where(mask, -adv * torch.exp(logp - old), 0.0)
    extra = loss - plain
    n = int(mask.sum())
    k = max(1, math.floor(n * 0.1))
    cov = token_covariance(logp, adv, mask)
    top = torch.zeros(n, dtype=torch.bool)
    top[torch.topk(flatten_valid(cov, mask), k).indices] = True
    top = unflatten_valid(top, mask, fill=False)
    assert torch.allclose(extra, torch.where(top, 0.5 * (logp - old).abs(), 0.0))
    assert int((extra != 0).sum()) == k


def test_clip_cov_hand():
    """Clip range [0.8, 1.2], ω = (1, 10), ρ = e^δ = [1.105, 0.819, 1.350, 0.670].
    Token 3 (A = −4, ρ = 0.67): L1 = 2.68 < L2 = 3.2, already clipped ⇒ excluded although its
    cov 6 is in range. Token 0 (cov 4.5) is the only candidate; n = max(⌊0.5·4⌋, 1) = 2 but one
    candidate ⇒ token 0 alone gets loss 0 (and gradient 0); the others keep the clipped loss."""
    gen = torch.Generator().manual_seed(0)
    kw = dict(clip_low=0.2, clip_high=0.2, cov_low=1.0, cov_high=10.0, select_ratio=0.5)
    sel = clip_cov_select(LOGP, OLD, A, MASK, generator=gen, **kw)
    assert sel.tolist() == [[True, False, False, False, False]]
    logp = LOGP.clone().requires_grad_()
    loss = clip_cov_loss(logp, OLD, A, MASK, generator=gen, **kw)
    ref = clipped_surrogate(LOGP, OLD, A, MASK, clip_low=0.2, clip_high=0.2)
    assert loss[0, 0].item() == 0.0 and ref[0, 0].item() == pytest.approx(-3 * math.exp(0.1))
    assert torch.equal(loss[0, 1:], ref[0, 1:])
    loss.sum().backward()
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[0, 1].item() == pytest.approx(-math.exp(-0.2))


def test_clip_cov_zeroes_exactly_n_tokens():
    """Random batch, ω = (−∞, ∞) so every unclipped valid token is a candidate, r = 0.25:
    exactly n = ⌊0.25·N⌋ tokens get loss 0 and gradient 0; all of them were unclipped valid tokens
    with nonzero clip-loss gradient; every other token has exactly the clip loss and gradient.
    The draw is reproducible with the generator's seed."""
    g = torch.Generator().manual_seed(1)
    mask = right_padded_mask([16, 3, 11, 8], 16)
    base = -torch.rand(4, 16, generator=g, dtype=torch.float64) * 2
    old = base + 0.3 * torch.randn(4, 16, generator=g, dtype=torch.float64)
    adv = torch.randn(4, 16, generator=g, dtype=torch.float64)
    kw = dict(clip_low=0.2, clip_high=0.2, cov_low=-math.inf, cov_high=math.inf, select_ratio=0.25)

    lp_cc = base.clone().requires_grad_()
    loss_cc = clip_cov_loss(lp_cc, old, adv, mask, generator=torch.Generator().manual_seed(7), **kw)
    loss_cc.sum().backward()
    lp_ref = base.clone().requires_grad_()
    loss_ref = clipped_surrogate(lp_ref, old, adv, mask, clip_low=0.2, clip_high=0.2)
    loss_ref.sum().backward()

    n = math.floor(0.25 * int(mask.sum()))
    zeroed = (lp_cc.grad == 0) & (lp_ref.grad != 0)
    assert int(zeroed.sum()) == n
    assert torch.equal(loss_cc[zeroed], torch.zeros(n, dtype=torch.float64))
    assert torch.equal(loss_cc[~zeroed], loss_ref[~zeroed])
    assert torch.equal(lp_cc.grad[~zeroed], lp_ref.grad[~zeroed])
    again = clip_cov_select(base, old, adv, mask, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(again, zeroed)
    other = clip_cov_select(base, old, adv, mask, generator=torch.Generator().manual_seed(8), **kw)
    assert int(other.sum()) == n and not torch.equal(other, zeroed)


def test_select_count():
    """max(⌊r·N⌋, 1), 0 for an empty pool; 0.0003·10000 = 2.9999999999999996 in floats → 3."""
    assert select_count(100, 2e-4) == 1
    assert select_count(10000, 0.0003) == 3
    assert select_count(0, 0.5) == 0
    with pytest.raises(ValueError):
        select_count(10, 0.0)


def test_clip_cov_needs_generator_or_selection():
    with pytest.raises(ValueError, match="generator"):
        clip_cov_loss(LOGP, OLD, A, MASK, clip_low=0.2, clip_high=0.2, cov_low=1, cov_high=5, select_ratio=0.5)


@pytest.mark.parametrize("which", ["clip_cov", "kl_cov"])
def test_batch_pool_selection_equals_full_batch(which):
    """The protocol of decision 7 in docs/algorithms.md: two micro-batches, selection computed once on the flattened,
    concatenated pool and sliced back; the summed token-mean losses (global token count) equal the
    full-batch loss with the selection computed on the full batch."""
    g = torch.Generator().manual_seed(2)
    lengths = [9, 4, 7, 2, 8, 6]
    mask = right_padded_mask(lengths, 9)
    logp = -torch.rand(6, 9, generator=g, dtype=torch.float64) * 2
    old = logp + 0.2 * torch.randn(6, 9, generator=g, dtype=torch.float64)
    adv = torch.randn(6, 9, generator=g, dtype=torch.float64)
    if which == "clip_cov":
        kw = dict(clip_low=0.2, clip_high=0.2, cov_low=-0.5, cov_high=2.0, select_ratio=0.1)
        def sel_fn(a, b, c, m):
            return clip_cov_select(a, b, c, m, generator=torch.Generator().manual_seed(3), **kw)
        def loss_fn(a, b, c, m, s):
            return clip_cov_loss(a, b, c, m, selected=s, **kw)
    else:
        kw = dict(select_ratio=0.1, kl_coef=1.0)
        def sel_fn(a, b, c, m):
            return kl_cov_select(a, c, m, select_ratio=0.1)
        def loss_fn(a, b, c, m, s):
            return kl_cov_loss(a, b, c, m, selected=s, **kw)

    full_sel = sel_fn(logp, old, adv, mask)
    assert full_sel.sum() > 1
    full = aggregate(loss_fn(logp, old, adv, mask, full_sel), mask, "token-mean")

    parts = [slice(0, 2), slice(2, 6)]
    pool = [torch.cat([flatten_valid(x[p], mask[p]) for p in parts])[None] for x in (logp, old, adv)]
    pool_sel = sel_fn(*pool, torch.ones_like(pool[0], dtype=torch.bool))[0]
    counts = sum(aggregate_counts(mask[p]) for p in parts)
    total, offset = 0.0, 0
    for p in parts:
        n = int(mask[p].sum())
        s = unflatten_valid(pool_sel[offset : offset + n], mask[p], fill=False)
        offset += n
        total = total + aggregate(loss_fn(logp[p], old[p], adv[p], mask[p], s), mask[p], "token-mean", num_tokens=counts[0])
    assert total.item() == pytest.approx(full.item(), rel=1e-12)


def test_gradcheck_with_fixed_selection():
    g = torch.Generator().manual_seed(4)
    mask = right_padded_mask([5, 3], 5)
    logp = (-torch.rand(2, 5, generator=g, dtype=torch.float64)).requires_grad_()
    old = logp.detach() + 0.3 + 0.1 * torch.rand(2, 5, generator=g, dtype=torch.float64)  # |δ| away from 0
    adv = torch.randn(2, 5, generator=g, dtype=torch.float64)
    sel = torch.tensor([[True, False, False, True, False], [False, True, False, False, False]])
    assert torch.autograd.gradcheck(
        lambda x: kl_cov_loss(x, old, adv, mask, select_ratio=0.1, kl_coef=0.7, selected=sel), (logp,)
    )
    assert torch.autograd.gradcheck(
        lambda x: clip_cov_loss(x, old, adv, mask, clip_low=0.5, clip_high=0.5, cov_low=1, cov_high=5,
                                select_ratio=0.1, selected=sel), (logp,)
    )
