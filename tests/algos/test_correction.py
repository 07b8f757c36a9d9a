"""Rollout ↔ trainer mismatch metrics and corrections against hand-computed numbers."""
import math

import pytest
import torch

from rltrain.algos.correction import correction_weights, mismatch_metrics


def test_identical_log_probs_mean_no_mismatch():
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.1], [0.9, 0.3, 0.2]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    m = mismatch_metrics(lp, lp.clone(), mask)
    assert m["abs_dlogp_mean"] == 0 and m["k3"] == 0 and m["ratio_max"] == 1 and m["ratio_p99"] == 1
    assert m["tokens"] == 5


def test_hand_values():
    rollout = torch.zeros(1, 3)
    trainer = torch.tensor([[math.log(2.0), -math.log(2.0), 0.3]])  # ρ = 2, 0.5, e^0.3 (masked)
    mask = torch.tensor([[1, 1, 0]])
    m = mismatch_metrics(rollout, trainer, mask)
    assert m["abs_dlogp_mean"].item() == pytest.approx(math.log(2.0))
    # k3 = mean(ρ − 1 − log ρ) = ((2 − 1 − ln2) + (0.5 − 1 + ln2)) / 2 = 0.25
    assert m["k3"].item() == pytest.approx(0.25)
    assert m["ratio_max"].item() == pytest.approx(2.0)
    assert m["ratio_p99"].item() == pytest.approx(0.5 + 0.99 * 1.5)  # linear interpolation of 2 points


def test_weights():
    rollout = torch.zeros(2, 3)
    trainer = torch.log(torch.tensor([[3.0, 1.0, 0.4], [1.1, 0.9, 1.0]]))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    w, _ = correction_weights(trainer, rollout, mask, mode="none")
    assert torch.equal(w, mask.float())
    w, _ = correction_weights(trainer, rollout, mask, mode="tis", c=2.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.0, 0.4], [1.1, 0.9, 0.0]]))
    w, info = correction_weights(trainer, rollout, mask, mode="icepop", icepop_low=0.5, icepop_high=2.0)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 0.0], [1.1, 0.9, 0.0]]))  # ρ 3 and 0.4 dropped
    assert info["kept_frac"].item() == pytest.approx(3 / 5)
    # row 0's geometric mean (3·1·0.4)^(1/3) = 1.063 (kept in [0.5, 2]); with a band [0.9, 1.05] dropped
    w, _ = correction_weights(trainer, rollout, mask, mode="seq_mask", seq_low=0.9, seq_high=1.05)
    assert torch.equal(w, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="icepop_low < 1 < icepop_high"):
        correction_weights(trainer, rollout, mask, mode="icepop", icepop_low=1.5, icepop_high=5.0)
    with pytest.raises(ValueError, match="valid: none, tis, icepop, seq_mask"):
        correction_weights(trainer, rollout, mask, mode="is")


def test_icepop_weights_in_band_tokens_by_their_ratio():
    """IcePop is masked importance sampling (IcePop paper, OpenRLHF, verl, TRL): weight ρ where
    lower ≤ ρ ≤ upper, 0 outside; default band [0.5, 5].

    By hand, ρ = 1.5, 0.6, 0.4, 4, 6 → weights 1.5, 0.6, 0 (below 0.5), 4, 0 (above 5). Before issue 31 in-band tokens weighed 1 and the band was [1/C, C] with C = 2, so
    ρ = 1.5 got 1.0 where the reference gives 1.5.
    """
    rollout = torch.zeros(1, 5)
    trainer = torch.log(torch.tensor([[1.5, 0.6, 0.4, 4.0, 6.0]]))
    w, info = correction_weights(trainer, rollout, torch.ones(1, 5), mode="icepop")
    torch.testing.assert_close(w, torch.tensor([[1.5, 0.6, 0.0, 4.0, 0.0]]))
    assert info["kept_frac"].item() == pytest.approx(3 / 5)
