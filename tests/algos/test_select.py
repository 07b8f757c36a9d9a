"""rltrain.algos.select: high-entropy and probability masks, batch-wide pools."""
from __future__ import annotations

import math

import pytest
import torch

from rltrain.algos.core import flatten_valid, unflatten_valid
from rltrain.algos.select import (
    high_entropy_mask,
    make_selection,
    pool_threshold,
    prob_mask,
    top_ratio_count,
)

from .conftest import right_padded_mask

H = torch.tensor([[0.1, 0.9, 0.5, 99.0], [0.7, 0.2, 99.0, 99.0]])  # 99 = padding garbage
HM = right_padded_mask([3, 2], 4)


def test_high_entropy_hand():
    """N = 5, ρ = 0.4 → ⌈2⌉ = 2 tokens: entropies 0.9 and 0.7; the padding 99s are never taken."""
    sel = high_entropy_mask(H, HM, top_ratio=0.4)
    assert sel.nonzero().tolist() == [[0, 1], [1, 0]]
    assert high_entropy_mask(H, HM, top_ratio=0.5).sum().item() == 3  # ⌈2.5⌉
    assert high_entropy_mask(H, HM, top_ratio=1.0).equal(HM)


def test_high_entropy_keeps_exactly_ceil_and_never_padding():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        B, T = 4, 9
        lengths = torch.randint(0, T + 1, (B,), generator=g).tolist()
        mask = right_padded_mask(lengths, T)
        ent = torch.rand(B, T, generator=g) + 10.0 * (~mask)  # padding holds the largest values
        ratio = [0.2, 0.35, 0.5, 0.9][trial % 4]
        n = int(mask.sum())
        sel = high_entropy_mask(ent, mask, top_ratio=ratio)
        assert int(sel.sum()) == top_ratio_count(n, ratio) == math.ceil(round(ratio * n, 9))
        assert not (sel & ~mask).any()
        if sel.any() and (mask & ~sel).any():  # every kept token has entropy ≥ every dropped one
            assert ent[sel].min() >= ent[mask & ~sel].max()


def test_ratio_count_has_no_float_artefacts():
    """0.07·100 = 7.000000000000001 and 0.55·100 = 55.00000000000001 in floats; ⌈ρN⌉ must be 7
    and 55, not 8 and 56."""
    assert 0.07 * 100 != 7 and 0.55 * 100 != 55
    assert top_ratio_count(100, 0.07) == 7
    assert top_ratio_count(100, 0.55) == 55
    assert top_ratio_count(16, 0.2) == 4  # ⌈3.2⌉
    with pytest.raises(ValueError):
        top_ratio_count(10, 0.0)


def test_ties_keep_exactly_k_in_position_order():
    ent = torch.ones(2, 3)
    sel = high_entropy_mask(ent, torch.ones(2, 3, dtype=torch.bool), top_ratio=0.5)
    assert sel.tolist() == [[True, True, True], [False, False, False]]


def test_pool_threshold_matches_exact_selection():
    """Pool [0.1, 0.9, 0.5, 0.7, 0.2], ρ = 0.4 → τ = 2nd largest = 0.7; entropy ≥ τ keeps the same
    two tokens as the exact top-k. Empty pool → +inf."""
    tau = pool_threshold(flatten_valid(H, HM), top_ratio=0.4)
    assert tau.item() == pytest.approx(0.7)
    assert high_entropy_mask(H, HM, threshold=tau).equal(high_entropy_mask(H, HM, top_ratio=0.4))
    assert pool_threshold(torch.empty(0), top_ratio=0.2).item() == math.inf


def test_batch_pool_selection_across_micro_batches():
    """The exact protocol: flatten every micro-batch, concatenate (as an all-gather would),
    select on the pool, hand each micro-batch its slice. Equals selecting on the whole batch, and
    differs from per-micro-batch selection."""
    g = torch.Generator().manual_seed(1)
    lengths = [7, 2, 5, 1, 6, 3]
    mask = right_padded_mask(lengths, 7)
    ent = torch.rand(6, 7, generator=g)
    ent[:3] += 1.0  # the first micro-batch has all the high-entropy tokens
    full = high_entropy_mask(ent, mask, top_ratio=0.3)
    parts = [slice(0, 3), slice(3, 6)]
    pool = torch.cat([flatten_valid(ent[p], mask[p]) for p in parts])
    pool_sel = high_entropy_mask(pool[None], torch.ones(1, pool.numel(), dtype=torch.bool), top_ratio=0.3)[0]
    offset, pieces = 0, []
    for p in parts:
        n = int(mask[p].sum())
        pieces.append(unflatten_valid(pool_sel[offset : offset + n], mask[p], fill=False))
        offset += n
    assert torch.equal(torch.cat(pieces), full)
    local = torch.cat([high_entropy_mask(ent[p], mask[p], top_ratio=0.3) for p in parts])
    assert not torch.equal(local, full)


def test_prob_mask_hand():
    """Threshold 0.9: p = [0.95, 0.5, 0.91, 0.89] → keep [F, T, F, T]; padding (p = 0.1) never."""
    old = torch.tensor([[0.95, 0.5, 0.91, 0.89, 0.1]]).log()
    mask = right_padded_mask([4], 5)
    assert prob_mask(old, mask).tolist() == [[False, True, False, True, False]]
    assert prob_mask(old, mask, threshold=0.96).tolist() == [[True, True, True, True, False]]


def test_make_selection_normalize():
    """"all" counts every valid token in the denominator; "selected" only the kept ones."""
    sel = torch.tensor([[True, False, True, True]])
    mask = right_padded_mask([3], 4)
    a = make_selection(mask, sel, "all")
    s = make_selection(mask, sel, "selected")
    assert a.loss_mask.tolist() == [[True, False, True, False]] and a.count_mask.equal(mask)
    assert s.count_mask.tolist() == [[True, False, True, False]]
    with pytest.raises(ValueError, match="all, selected"):
        make_selection(mask, sel, "some")
