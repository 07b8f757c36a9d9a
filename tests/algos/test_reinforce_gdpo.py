"""REINFORCE++ returns and GDPO multi-reward normalisation against hand-derived values and their
invariants (batch-whitened advantages have mean 0 and std 1; zero spread gives exactly 0)."""
import math

import pytest
import torch

from rltrain.algos.core import masked_whiten
from rltrain.algos.grpo import gdpo_scores, reinforce_pp_returns

MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float32)  # lengths 3 and 2


def test_reinforce_pp_returns_hand_values_with_kl():
    """r = outcome at the last valid token − β·kl; G_t = Σ_{t'≥t} r_t'. β = 0.5:
    row 0 (outcome 1, kl [0.2, 0.4, 0.2]): r = [−0.1, −0.2, 0.9] → G = [0.6, 0.7, 0.9];
    row 1 (outcome 0, kl [0.1, −0.2, 9]): r = [−0.05, 0.1, pad] → G = [0.05, 0.1, 0]."""
    kl = torch.tensor([[0.2, 0.4, 0.2], [0.1, -0.2, 9.0]])
    g = reinforce_pp_returns(torch.tensor([1.0, 0.0]), MASK, kl=kl, kl_coef=0.5)
    assert torch.allclose(g, torch.tensor([[0.6, 0.7, 0.9], [0.05, 0.1, 0.0]]), atol=1e-6)


def test_reinforce_pp_without_kl_broadcasts_the_outcome():
    g = reinforce_pp_returns(torch.tensor([0.3, -1.0]), MASK)
    assert torch.equal(g, torch.tensor([[0.3, 0.3, 0.3], [-1.0, -1.0, 0.0]]))
    with pytest.raises(ValueError, match="kl"):
        reinforce_pp_returns(torch.tensor([0.3, -1.0]), MASK, kl_coef=0.1)


def test_baseline_subtracts_group_mean_and_flat_groups_are_exactly_zero():
    mask = torch.ones(6, 2)
    scores = torch.tensor([1.0, 0.0, 0.5, 0.7, 0.7, 0.7])  # group 0: mean 0.5; group 1 all 0.7
    g = reinforce_pp_returns(scores, mask, group_size=3)
    assert torch.allclose(g[:3], torch.tensor([[0.5, 0.5], [-0.5, -0.5], [0.0, 0.0]]))
    assert torch.equal(g[3:], torch.zeros(3, 2))  # not 1 ulp off: exactly 0 (decision 11 in docs/algorithms.md)


def test_whitened_reinforce_pp_advantages_have_batch_mean_0_and_std_1():
    gen = torch.Generator().manual_seed(0)
    mask = (torch.arange(7)[None, :] < torch.tensor([7, 3, 5, 1, 6, 2, 4, 7])[:, None]).float()
    kl = torch.randn(8, 7, generator=gen).abs() * 0.1
    g = reinforce_pp_returns(torch.rand(8, generator=gen), mask, kl=kl, kl_coef=0.3, group_size=4)
    adv = masked_whiten(g, mask.bool())
    valid = adv[mask.bool()]
    assert abs(valid.mean().item()) < 1e-6
    assert valid.std(correction=1).item() == pytest.approx(1.0, abs=1e-6)  # Bessel, like masked_whiten
    assert torch.equal(adv[~mask.bool()], torch.zeros(int((~mask.bool()).sum())))


def test_gdpo_normalises_each_component_within_its_group_then_sums():
    """Group of 4, component 0 = [1, 0, 1, 0]: mean 0.5, std (ddof 1) = √(1/3) → ±0.5·√3;
    component 1 all 0.2 (zero spread → 0); component 2 = [0, 0, 0, 4]: mean 1, std 2 → [−.5, −.5, −.5, 1.5].
    Weights [1, 10, 0.5]; second group: component 0 flat."""
    comps = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0],
                          [0.2] * 8,
                          [0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 4.0]])
    out = gdpo_scores(comps, torch.tensor([1.0, 10.0, 0.5]), 4, eps=0.0)
    h = 0.5 * math.sqrt(3)
    expect = torch.tensor([h - 0.25, -h - 0.25, h - 0.25, -h + 0.75, -0.25, -0.25, -0.25, 0.75])
    assert torch.allclose(out, expect, atol=1e-6)


def test_gdpo_differs_from_normalising_the_sum():
    """A large-scale component no longer drowns a small one: after GDPO both count by their weight."""
    comps = torch.tensor([[100.0, 0.0, 50.0, 50.0], [0.0, 1.0, 1.0, 0.0]])
    out = gdpo_scores(comps, torch.ones(2), 4, eps=0.0)
    raw = comps.sum(0)
    assert torch.argmax(raw).item() == 0
    c0 = (comps[0] - comps[0].mean()) / comps[0].std()
    c1 = (comps[1] - comps[1].mean()) / comps[1].std()
    assert torch.allclose(out, c0 + c1, atol=1e-6)
    with pytest.raises(ValueError, match="K weights"):
        gdpo_scores(comps, torch.ones(3), 4)


def test_gdpo_batch_normalises_the_sum_like_the_paper():
    """GDPO's last step (Eq. of the paper; its reference code): the weighted sum of group-normalised
    components is normalised over the whole batch, one value per response.

    Two groups of 4, one component: [0, 0, 1, 0] → group-normalised (mean 0.25, std 0.5)
    [−0.5, −0.5, 1.5, −0.5]; [1, 1, 1, 1] → 0. Over the batch of 8: mean 0, Bessel std √(3/7) = 0.6547,
    so [−0.7638, −0.7638, 2.2913, −0.7638, 0, 0, 0, 0]. Normalising the sum again within each group
    (rltrain before issue 31) gives back [−0.5, −0.5, 1.5, −0.5, 0, 0, 0, 0]. Moments summed over two
    ranks' halves give the same numbers as the whole batch.
    """
    from rltrain.algos.core import masked_moments
    from rltrain.algos.grpo import batch_normalize

    total = gdpo_scores(torch.tensor([[0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]]), torch.ones(1), 4, eps=0.0)
    assert torch.allclose(total, torch.tensor([-0.5, -0.5, 1.5, -0.5, 0.0, 0.0, 0.0, 0.0]))
    s = 0.5 / math.sqrt(3 / 7)
    expect = torch.tensor([-s, -s, 3 * s, -s, 0.0, 0.0, 0.0, 0.0])
    assert torch.allclose(batch_normalize(total, eps=0.0), expect, atol=1e-6)
    ones = torch.ones(4, dtype=torch.bool)
    moments = masked_moments(total[:4], ones) + masked_moments(total[4:], ones)
    halves = torch.cat([batch_normalize(total[:4], moments=moments, eps=0.0),
                        batch_normalize(total[4:], moments=moments, eps=0.0)])
    assert torch.allclose(halves, expect, atol=1e-6)
    assert torch.equal(batch_normalize(torch.full((6,), 0.7)), torch.zeros(6))  # zero spread: exactly 0
