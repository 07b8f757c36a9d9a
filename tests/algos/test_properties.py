"""Property tests (hypothesis): padding/masking invariance and micro-batch invariance.

Every masked function must give the same result on the valid positions (and 0 / False on the
padding) when padded positions — extra columns, extra all-padding rows, and the existing padding
— hold arbitrary finite garbage instead of zeros.
"""
from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from rltrain.algos import core, entropy, grpo, ppo, select, spo

from .conftest import PROPERTY_SETTINGS, right_padded_mask


@st.composite
def padded_batches(draw):
    B = draw(st.integers(1, 4))
    T = draw(st.integers(1, 6))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    seed = draw(st.integers(0, 2**31 - 1))
    extra_cols = draw(st.integers(1, 3))
    extra_rows = draw(st.integers(0, 2))
    garbage_scale = draw(st.sampled_from([1.0, 1e3, 1e6]))
    g = torch.Generator().manual_seed(seed)
    mask = right_padded_mask(lengths, T)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    clean = {
        "old_logp": old,
        "logp": old + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64),
        "adv": torch.randn(B, T, generator=g, dtype=torch.float64),
        "values": torch.randn(B, T, generator=g, dtype=torch.float64),
        "x": torch.randn(B, T, generator=g, dtype=torch.float64),
        "entropy": torch.rand(B, T, generator=g, dtype=torch.float64),
    }
    clean = {k: torch.where(mask, v, 0.0) for k, v in clean.items()}
    Bp, Tp = B + extra_rows, T + extra_cols
    mask_p = torch.zeros(Bp, Tp, dtype=torch.bool)
    mask_p[:B, :T] = mask
    padded = {}
    for k, v in clean.items():
        junk = torch.randn(Bp, Tp, generator=g, dtype=torch.float64) * garbage_scale
        junk[:B, :T] = torch.where(mask, v, junk[:B, :T])
        padded[k] = junk
    scores = torch.randn(B, generator=g, dtype=torch.float64)
    scores_p = torch.cat([scores, torch.randn(extra_rows, generator=g, dtype=torch.float64) * garbage_scale])
    finished = torch.rand(B, generator=g) < 0.5
    finished_p = torch.cat([finished, torch.ones(extra_rows, dtype=torch.bool)])
    return dict(B=B, T=T, mask=mask, mask_p=mask_p, clean=clean, padded=padded, scores=scores,
                scores_p=scores_p, finished=finished, finished_p=finished_p, lengths=lengths, seed=seed)


def _same_tokens(a, b, case, zero=0.0):
    """a on the clean batch, b on the padded one: equal on [:B, :T], `zero` elsewhere."""
    B, T = case["B"], case["T"]
    assert torch.allclose(b[:B, :T], a, rtol=1e-10, atol=1e-12)
    outside = torch.ones_like(case["mask_p"])
    outside[:B, :T] = False
    assert (b[outside] == zero).all()
    assert (b[:B, :T][~case["mask"]] == zero).all()


@PROPERTY_SETTINGS
@given(padded_batches())
def test_statistics_and_aggregation_ignore_padding(case):
    c, p, m, mp = case["clean"], case["padded"], case["mask"], case["mask_p"]
    assert torch.allclose(core.masked_mean(p["x"], mp), core.masked_mean(c["x"], m), rtol=1e-10, atol=1e-12)
    for unbiased in (True, False):
        assert torch.allclose(core.masked_var(p["x"], mp, unbiased=unbiased),
                              core.masked_var(c["x"], m, unbiased=unbiased), rtol=1e-9, atol=1e-12)
    _same_tokens(core.masked_whiten(c["x"], m), core.masked_whiten(p["x"], mp), case)
    for mode in core.AGGREGATION_MODES:
        assert torch.allclose(core.aggregate(p["x"], mp, mode, constant=10),
                              core.aggregate(c["x"], m, mode, constant=10), rtol=1e-10, atol=1e-12)
    assert torch.equal(core.aggregate_counts(mp), core.aggregate_counts(m))


@PROPERTY_SETTINGS
@given(padded_batches())
def test_policy_and_value_losses_ignore_padding(case):
    c, p, m, mp = case["clean"], case["padded"], case["mask"], case["mask_p"]

    def both(fn):
        return fn(c, m), fn(p, mp)

    _same_tokens(*both(lambda d, mk: ppo.clipped_surrogate(d["logp"], d["old_logp"], d["adv"], mk,
                                                          clip_low=0.2, clip_high=0.28, dual_clip=3.0)), case)
    _same_tokens(*both(lambda d, mk: ppo.value_loss(d["values"], d["x"], d["adv"], mk, clip=0.2)), case)
    _same_tokens(*both(lambda d, mk: entropy.kl_cov_loss(d["logp"], d["old_logp"], d["adv"], mk,
                                                        select_ratio=0.3, kl_coef=1.0)), case)
    seed = case["seed"]
    _same_tokens(*both(lambda d, mk: entropy.clip_cov_loss(
        d["logp"], d["old_logp"], d["adv"], mk, clip_low=0.2, clip_high=0.2, cov_low=-1.0, cov_high=1.0,
        select_ratio=0.3, generator=torch.Generator().manual_seed(seed))), case)
    a, b = both(lambda d, mk: ppo.ratio_metrics(d["logp"], d["old_logp"], mk))
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-10, atol=1e-12), k
    a, b = both(lambda d, mk: ppo.clip_fraction(d["logp"], d["old_logp"], d["adv"], mk, clip_low=0.2, clip_high=0.2))
    assert torch.allclose(a, b)


@PROPERTY_SETTINGS
@given(padded_batches(), st.sampled_from([0.9, 1.0]), st.sampled_from([0.8, 1.0]))
def test_gae_and_token_rewards_ignore_padding(case, gamma, lam):
    c, p, m, mp = case["clean"], case["padded"], case["mask"], case["mask_p"]
    r = ppo.token_rewards(case["scores"], c["x"], m, case["finished"], kl_coef=0.1)
    r_p = ppo.token_rewards(case["scores_p"], p["x"], mp, case["finished_p"], kl_coef=0.1)
    _same_tokens(r, r_p, case)
    # the padded version's token rewards are garbage off the mask too
    r_junk = torch.where(mp, r_p, p["adv"])
    adv, ret = ppo.gae(r, c["values"], m, gamma=gamma, lam=lam, finished=case["finished"])
    adv_p, ret_p = ppo.gae(r_junk, p["values"], mp, gamma=gamma, lam=lam, finished=case["finished_p"])
    _same_tokens(adv, adv_p, case)
    _same_tokens(ret, ret_p, case)


@PROPERTY_SETTINGS
@given(padded_batches(), st.sampled_from([0.1, 0.2, 0.5, 1.0]))
def test_selection_masks_ignore_padding(case, ratio):
    c, p, m, mp = case["clean"], case["padded"], case["mask"], case["mask_p"]
    sel = select.high_entropy_mask(c["entropy"], m, top_ratio=ratio)
    sel_p = select.high_entropy_mask(p["entropy"], mp, top_ratio=ratio)
    _same_tokens(sel, sel_p, case, zero=False)
    assert int(sel_p.sum()) == select.top_ratio_count(int(m.sum()), ratio)
    _same_tokens(select.prob_mask(c["old_logp"], m, threshold=0.5),
                 select.prob_mask(p["old_logp"], mp, threshold=0.5), case, zero=False)


@PROPERTY_SETTINGS
@given(padded_batches(), st.sampled_from(["group_mean", "zero"]), st.integers(1, 3))
def test_spo_chain_ignores_padding(case, first, interval):
    c, p, m, mp = case["clean"], case["padded"], case["mask"], case["mask_p"]
    cuts = spo.cutpoint_partition(c["logp"], m, interval=interval)
    cuts_p = spo.cutpoint_partition(p["logp"], mp, interval=interval)
    assert cuts_p[: case["B"]] == cuts and all(x == [] for x in cuts_p[case["B"]:])
    vals = [[0.1 * (j + 1) for j in range(len(cs))] for cs in cuts_p]
    prompt = torch.full((mp.shape[0],), 0.3, dtype=torch.float64)
    kw = dict(first_segment_value=first, prompt_values=prompt)
    a = spo.chain_advantages(cuts, vals[: case["B"]], case["scores"], m, **{**kw, "prompt_values": prompt[: case["B"]]})
    a_p = spo.chain_advantages(cuts_p, vals, case["scores_p"], mp, **kw)
    _same_tokens(a, a_p, case)


@PROPERTY_SETTINGS
@given(st.lists(st.integers(0, 8), min_size=1, max_size=8), st.integers(0, 2**31 - 1), st.data())
def test_aggregate_random_micro_batch_splits(lengths, seed, data):
    """Any split into consecutive micro-batches, each trimmed to its own width, with the global
    counts: the sum of the parts equals the full-batch aggregate in every mode."""
    B, T = len(lengths), max(max(lengths), 1)
    mask = right_padded_mask(lengths, T)
    x = torch.randn(B, T, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cuts = sorted(data.draw(st.sets(st.integers(1, B - 1), max_size=B - 1))) if B > 1 else []
    bounds = [0, *cuts, B]
    parts = [slice(a, b) for a, b in zip(bounds, bounds[1:])]
    counts = sum(core.aggregate_counts(mask[s]) for s in parts)
    for mode in core.AGGREGATION_MODES:
        full = core.aggregate(x, mask, mode, constant=9)
        total = sum(
            core.aggregate(x[s, : max(max(lengths[s]), 1)], mask[s, : max(max(lengths[s]), 1)], mode, constant=9,
                           num_tokens=counts[0], num_seqs=counts[1])
            for s in parts
        )
        assert torch.allclose(total, full, rtol=1e-10, atol=1e-12), mode


@PROPERTY_SETTINGS
@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**31 - 1), st.sampled_from([0, 1]))
def test_group_advantages_zero_mean(num_groups, group_size, seed, ddof):
    scores = torch.randint(0, 3, (num_groups * group_size,), generator=torch.Generator().manual_seed(seed)).double()
    adv = grpo.group_advantages(scores, group_size, std_ddof=ddof)
    if group_size > 1:
        assert torch.allclose(adv.view(num_groups, group_size).mean(1), torch.zeros(num_groups, dtype=torch.float64),
                              atol=1e-9)
        keep = grpo.dynamic_sampling_keep(scores, group_size)
        # dropped groups are exactly the zero-advantage ones
        assert torch.equal(~keep, (adv.view(num_groups, group_size) == 0).all(1))
