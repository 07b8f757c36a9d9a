"""Decision 11 in docs/algorithms.md: a normalisation set with zero spread gets
advantage exactly 0 whatever the dtype, group size and eps; masked_whiten(shift_mean=False) keeps
the mean ((x − μ)·rsqrt(σ²+eps) + μ, verl/TRL's meaning).

On the old code: all-0.7 groups among other groups gave ~6e-8/eps (0.06 at eps 1e-6, 5.96 at
1e-8); an all-0.7 batch whitened to ±1e-3-scale noise; shift_mean=False returned x·rsqrt(var);
a tree node whose children all scored 0.7 left its edges ±1e-16 (kept for training)."""
import pytest
import torch

from rltrain.algos import core, spo
from rltrain.algos.grpo import group_advantages


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("group_size", [2, 3, 8, 16])
@pytest.mark.parametrize("eps", [1e-8, 1e-6, 0.0])
@pytest.mark.parametrize("value", [0.7, 0.1, 1.0 / 3.0, 123.456])
def test_equal_groups_get_exactly_zero(dtype, group_size, eps, value):
    g = torch.Generator().manual_seed(group_size)
    mixed = torch.rand(group_size, generator=g)
    scores = torch.cat([torch.full((group_size,), value), mixed, torch.full((group_size,), value)]).to(dtype)
    for scale in ("std", "none"):
        adv = group_advantages(scores, group_size, scale=scale, eps=eps).view(3, group_size)
        assert torch.equal(adv[0], torch.zeros_like(adv[0])) and torch.equal(adv[2], torch.zeros_like(adv[2]))
        assert adv[1].abs().max() > 0  # the mixed group is untouched


def test_all_equal_batch_whitens_to_zero_and_mixed_batch_is_unchanged():
    x = torch.full((3, 5), 0.7)
    mask = torch.ones(3, 5)
    for unbiased in (True, False):
        assert torch.equal(core.masked_whiten(x, mask, unbiased=unbiased), torch.zeros(3, 5))
        assert torch.equal(core.masked_whiten(x, mask, unbiased=unbiased, shift_mean=False), x)
    # moments summed over pieces (micro-batches / ranks) behave the same
    moments = core.masked_moments(x[:1], mask[:1]) + core.masked_moments(x[1:], mask[1:])
    assert torch.equal(core.masked_whiten(x[1:], mask[1:], moments=moments), torch.zeros(2, 5))
    y = torch.tensor([[1.0, 2.0, 4.0], [0.0, 3.0, 5.0]])
    m = torch.tensor([[1, 1, 1], [1, 1, 0]])
    vals = torch.tensor([1.0, 2.0, 4.0, 0.0, 3.0])
    mu, var = vals.mean(), vals.var(correction=1)
    want = (y - mu) / torch.sqrt(var + 1e-8) * m
    torch.testing.assert_close(core.masked_whiten(y, m), want)


def test_shift_mean_false_keeps_the_mean():
    y = torch.tensor([[1.0, 2.0, 4.0, 9.0]])
    m = torch.ones(1, 4)
    mu, var = y.mean(), y.var(correction=0)
    out = core.masked_whiten(y, m, unbiased=False, shift_mean=False)
    torch.testing.assert_close(out, (y - mu) / torch.sqrt(var + 1e-8) + mu)
    torch.testing.assert_close(out.mean(), mu)
    torch.testing.assert_close(out.var(correction=0), torch.tensor(1.0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", ["rloo", "grpo"])
def test_tree_children_with_equal_values_give_zero_edges(variant):
    nan = float("nan")
    parent = [-1, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    leaves = torch.tensor([nan, nan, nan, nan] + [0.7] * 3 + [0.7] * 3 + [0.1, 0.7, 0.9])
    values, stds = spo.tree_values(parent, leaves)
    adv = spo.tree_edge_advantages(parent, values, stds, variant=variant)
    keep = spo.tree_keep_edges(adv)
    assert not keep[4:10].any()  # the all-0.7 subtrees train nothing
    assert keep[10:].all()
