"""rltrain.algos.grpo against hand-derived numbers and invariants."""
from __future__ import annotations

import math

import pytest
import torch

from rltrain.algos.grpo import dynamic_sampling_keep, group_advantages, group_means, overlong_penalty

SCORES = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])


def test_group_advantages_hand_unbiased_std():
    """G = 4. Group 1 [1,0,0,1]: mean ½, unbiased std √(4·¼/3) = 0.57735 → ±0.866025.
    Group 2 [1,1,1,0]: mean ¾, unbiased var (3·1/16 + 9/16)/3 = ¼, std ½ → [½, ½, ½, −1.5]."""
    adv = group_advantages(SCORES, 4, eps=0.0)
    s = 0.5 / math.sqrt(1 / 3)
    assert torch.allclose(adv, torch.tensor([s, -s, -s, s, 0.5, 0.5, 0.5, -1.5]), atol=1e-6)
    with_eps = group_advantages(SCORES, 4)  # eps = 1e-6 added to the std
    assert with_eps[4].item() == pytest.approx(0.25 / (0.5 + 1e-6), rel=1e-7)


def test_group_advantages_population_std_and_no_scale():
    """ddof 0: group 2 var 0.75/4 = 0.1875, std 0.4330 → 0.25/0.4330 = 0.57735, −0.75/0.4330 =
    −1.732. scale="none" (Dr. GRPO): r − mean = [½, −½, −½, ½, ¼, ¼, ¼, −¾]."""
    adv = group_advantages(SCORES, 4, eps=0.0, std_ddof=0)
    assert torch.allclose(adv[4:], torch.tensor([1 / math.sqrt(3)] * 3 + [-math.sqrt(3)]), atol=1e-6)
    plain = group_advantages(SCORES, 4, scale="none")
    assert torch.allclose(plain, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75]))


def test_group_advantages_zero_mean_per_group():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5 * 6, generator=g)
    for scale in ("std", "none"):
        adv = group_advantages(scores, 6, scale=scale)
        assert torch.allclose(adv.view(5, 6).mean(1), torch.zeros(5), atol=1e-6)
    adv = group_advantages(scores, 6)
    assert torch.allclose(adv.view(5, 6).std(1), torch.ones(5), atol=1e-4)


def test_group_of_size_one_uses_mean_zero_std_one():
    """verl: mean 0 and std 1, so Â = r/(1 + eps)."""
    adv = group_advantages(torch.tensor([2.0, -1.0]), 1)
    assert torch.allclose(adv, torch.tensor([2.0, -1.0]) / (1 + 1e-6))


def test_all_equal_group_has_zero_advantage():
    assert torch.equal(group_advantages(torch.ones(4), 4), torch.zeros(4))


def test_group_means():
    assert torch.allclose(group_means(SCORES, 4), torch.tensor([0.5] * 4 + [0.75] * 4))


def test_dynamic_sampling_keep():
    """Groups [1,1] and [0,0] are uniform (dropped); [0,1] is kept; G = 1 keeps everything."""
    keep = dynamic_sampling_keep(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), 2)
    assert keep.tolist() == [False, True, False]
    assert dynamic_sampling_keep(torch.tensor([1.0, 1.0]), 1).tolist() == [True, True]


def test_overlong_penalty_hand():
    """max 20, cache 4 → expected 16. |y| = 10, 16 → 0; 18 → −2/4 = −0.5; 20 → −1. Factor 2 doubles."""
    lengths = torch.tensor([10, 16, 18, 20])
    assert torch.allclose(overlong_penalty(lengths, max_len=20, cache_len=4, factor=1.0), torch.tensor([0.0, 0.0, -0.5, -1.0]))
    assert torch.allclose(overlong_penalty(lengths, max_len=20, cache_len=4, factor=2.0), torch.tensor([0.0, 0.0, -1.0, -2.0]))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="divisible"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="std, none"):
        group_advantages(torch.zeros(4), 2, scale="rank")
    with pytest.raises(ValueError):
        overlong_penalty(torch.tensor([1]), max_len=4, cache_len=4, factor=1.0)


def test_rloo_hand_values_sum_to_zero_and_zero_spread():
    from rltrain.algos.grpo import rloo_advantages

    adv = rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 0.7, 0.7, 0.7, 0.7]), 4)
    # r_0 = 1, others' mean 1/3 → 2/3; r_1 = 0, others' mean 2/3 → −2/3
    torch.testing.assert_close(adv[:4], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))
    assert torch.equal(adv[4:], torch.zeros(4))  # all 0.7: exactly 0
    g = torch.rand(30, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(rloo_advantages(g, 6).view(5, 6).sum(1), torch.zeros(5), atol=1e-6)
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo_advantages(g, 1)


# --------------------------------------------------------------------------- the estimator table

from rltrain.algos.registry import ADV_ESTIMATORS  # noqa: E402

_KW = dict(scale="std", eps=0.0, std_ddof=1)


def test_estimator_table_names_and_what_each_needs():
    """The valid algo.adv_estimator names come from the table; REINFORCE++ puts the KL in the reward
    (needs π_old and the reference), the REINFORCE++ pair whitens over the batch, grpo/rloo do neither.
    REINFORCE++-baseline's β weights a KL loss, as grpo's and rloo's does (issue 31)."""
    assert tuple(ADV_ESTIMATORS) == ("grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
    assert {n: (e.kl_in_reward, e.whiten) for n, e in ADV_ESTIMATORS.items()} == {
        "grpo": (False, False), "rloo": (False, False),
        "reinforce_pp": (True, True), "reinforce_pp_baseline": (False, True)}
    with pytest.raises(ValueError, match="'reinforce'; valid: grpo, reinforce_pp, reinforce_pp_baseline, rloo"):
        ADV_ESTIMATORS["reinforce"]


def test_grpo_and_rloo_entries_broadcast_their_sequence_advantage_and_ignore_kl():
    """Each row's advantage on every position of the row (padding too: the loss masks it). RLOO,
    group 1 [1,0,0,1]: r − mean of the other three = 1 − 1/3 = 2/3, 0 − 2/3 = −2/3."""
    mask = torch.tensor([[1.0, 1.0, 0.0]] * 8)
    kl = torch.full((8, 3), 5.0)
    g = ADV_ESTIMATORS["grpo"].fn(SCORES, mask, group_size=4, kl=kl, kl_coef=1.0, **_KW)
    s = 0.5 / math.sqrt(1 / 3)
    assert torch.allclose(g, torch.tensor([s, -s, -s, s, 0.5, 0.5, 0.5, -1.5])[:, None].expand(8, 3), atol=1e-6)
    r = ADV_ESTIMATORS["rloo"].fn(SCORES, mask, group_size=4, kl=kl, kl_coef=1.0, **_KW)
    assert torch.allclose(r[:4, 0], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]), atol=1e-6)
    assert torch.equal(r[:, 0], r[:, 2])


def test_reinforce_pp_entry_folds_the_kl_into_the_token_returns():
    """scores [1, 0], β = 0.5, kl row 0 [0.1, 0.2, ·], row 1 [0.3, ·, ·]:
    row 0 rewards [−0.05, 1 − 0.1] → returns [0.85, 0.9, 0]; row 1 [−0.15] → [−0.15, 0, 0]."""
    scores = torch.tensor([1.0, 0.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    kl = torch.tensor([[0.1, 0.2, 9.0], [0.3, 9.0, 9.0]])
    plain = ADV_ESTIMATORS["reinforce_pp"].fn(scores, mask, group_size=2, kl=kl, kl_coef=0.5, **_KW)
    assert torch.allclose(plain, torch.tensor([[0.85, 0.9, 0.0], [-0.15, 0.0, 0.0]]), atol=1e-6)


def test_reinforce_pp_baseline_advantage_is_the_centred_outcome_and_the_kl_a_loss():
    """REINFORCE++-baseline by the paper (decision 14 in docs/algorithms.md): A = outcome − group mean on every
    token, whitened over the batch's tokens; β weights a KL loss, the advantage holds no KL.

    Same inputs as above (G = 2, β = 0.5): outcomes centred to [½, −½] → row 0 [0.5, 0.5, ·], row 1
    [−0.5, ·, ·]. Whitened over the 3 valid tokens [0.5, 0.5, −0.5]: mean 1/6, Bessel variance
    (2·(1/3)² + (2/3)²)/2 = 1/3 → (0.5 − 1/6)·√3 = 0.5774 and (−0.5 − 1/6)·√3 = −1.1547.
    Before issue 31 the per-token KL returns were kept: row 0 [0.35, 0.4], row 1 [−0.65]; verl centres
    the score with the summed KL (row 0: 1 − 0.15 = 0.85, row 1: −0.15 → ±0.5 on every token)."""
    from rltrain.algos.core import masked_whiten

    scores = torch.tensor([1.0, 0.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    kl = torch.tensor([[0.1, 0.2, 9.0], [0.3, 9.0, 9.0]])
    entry = ADV_ESTIMATORS["reinforce_pp_baseline"]
    assert not entry.kl_in_reward and entry.whiten  # the loop gives β to the KL loss, with the reference
    base = entry.fn(scores, mask, group_size=2, kl=kl, kl_coef=0.5, **_KW)
    valid = mask.bool()
    assert torch.allclose(base[valid], torch.tensor([0.5, 0.5, -0.5]), atol=1e-6)
    adv = masked_whiten(base, valid, eps=0.0)
    r3 = math.sqrt(3)
    assert torch.allclose(adv[valid], torch.tensor([r3 / 3, r3 / 3, -2 * r3 / 3]), atol=1e-6)
