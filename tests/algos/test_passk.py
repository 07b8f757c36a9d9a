"""pass@k and majority voting (algos.passk) against brute force and hand-worked examples."""
import itertools
import math
from fractions import Fraction

import pytest

from rltrain.algos.passk import majority_vote, pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """The share of the C(n, k) k-subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_equals_the_subset_count(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)), abs=1e-12), (n, c, k)


def test_hand_values():
    # n=4, c=1, k=2: of the 6 pairs, the 3 that contain the correct sample pass.
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5, abs=1e-15)
    # n=5, c=2, k=2: the 3 pairs drawn from the 3 wrong samples fail, 7 of 10 pass.
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-15)


def test_all_correct_is_one_and_none_correct_is_zero():
    for n in (1, 2, 5, 16, 200):
        for k in (1, n // 2 or 1, n):
            assert pass_at_k(n, n, k) == 1.0
            assert pass_at_k(n, 0, k) == 0.0


def test_pass_at_1_is_the_fraction_correct():
    for n in (1, 3, 8, 64):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)


def test_one_when_fewer_wrong_samples_than_k():
    # n − c < k: every k-subset must contain a correct sample; exact 1.0, not 1 − tiny.
    assert pass_at_k(10, 8, 3) == 1.0
    assert pass_at_k(10, 7, 3) < 1.0


def test_large_n_is_accurate():
    # C(1000, 500) has ~300 digits (a float overflows): the product form must still match the exact ratio.
    n, c, k = 1000, 3, 500
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(1000, 1, 1) == pytest.approx(1e-3, rel=1e-12)


@pytest.mark.parametrize("n,c,k", [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_invalid_arguments_raise(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_majority_vote_hand_examples():
    # clear majority: "7" twice beats "4" once; "7" is wrong
    assert majority_vote(["4", "7", "7"], [True, False, False]) is False
    assert majority_vote(["7", "4", "4"], [False, True, True]) is True
    # tie 2–2: the answer seen first wins
    assert majority_vote(["3", "5", "5", "3"], [False, True, True, False]) is False
    assert majority_vote(["5", "3", "3", "5"], [True, False, False, True]) is True
    # a three-way tie 1–1–1 goes to the first answer
    assert majority_vote(["2", "9", "8"], [True, False, False]) is True
    assert majority_vote(["9", "2", "8"], [False, True, False]) is False
    # no answer (None) casts no vote: one "2" outvotes two missing answers
    assert majority_vote([None, None, "2"], [False, False, True]) is True
    # no vote at all: not solved
    assert majority_vote([None, None], [False, False]) is False
    # votes are exact strings: "1/2" and "0.5" are different answers, and the two "0.5" win
    assert majority_vote(["1/2", "0.5", "0.5"], [True, True, True]) is True
    assert majority_vote(["1/2", "0.5", "0.5"], [True, False, False]) is False


def test_majority_vote_lengths_must_match():
    with pytest.raises(ValueError, match="majority_vote"):
        majority_vote(["1", "2"], [True])
