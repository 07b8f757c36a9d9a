"""MathReward: extraction, normalization, math-verify equivalence, the worker pool."""
import threading
import time

import pytest

from rltrain.rewards.math import (
    MathReward,
    extract_answer,
    extract_boxed,
    math_verify_equal,
    normalize_answer,
    parse_number,
    quick_compare,
)
from rltrain.types import Sample


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{\\frac{\\sqrt{2}}{2}} done", "\\frac{\\sqrt{2}}{2}"),  # nested braces
        ("first \\boxed{1}, then \\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # the last box wins
        ("\\boxed{\\boxed{3}}", "3"),  # the innermost box starts last
        ("\\fbox{7}", "7"),
        ("thus \\boxed 5.", "5"),
        ("The answer is $\\frac{1}{2}$. Next I check 7.", "\\frac{1}{2}"),
        ("The final answer is: 42\nThanks to 7 friends", "42"),
        ("The answer is 3.5. Then 9", "3.5"),
        ("Work work\n#### 1,234", "1,234"),
        ("the answer is 6\n#### 5", "5"),  # the later marker wins
        ("#### 5\nso the answer is 6", "6"),
        ("so 3 apples and -5.5 pears", "-5.5"),  # last number
        ("x = 1/2", "1/2"),
        ("no digits at all", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_boxed_beats_later_markers_and_unbalanced_box_is_ignored():
    assert extract_answer("\\boxed{4}. The answer is 5") == "4"
    assert extract_boxed("\\boxed{1} and \\boxed{2") == "1"
    assert extract_boxed("no box") is None


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("\\$1,000.50", "1000.50"),
        ("48^\\circ", "48"),
        ("48^{\\circ}", "48"),
        ("100\\text{ square units}", "100"),
        ("5 cm", "5"),
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\tfrac{1}{2}", "\\frac{1}{2}"),
        ("x = 5", "5"),
        ("3,\\!250", "3250"),
        ("10{,}000", "10000"),
        ("$\\left( 1, 2 \\right)$", "(1,2)"),
        ("\\text{4:30 p.m.}", "4:30p.m"),
        ("5 x", "5x"),  # a one-letter word is a variable, not a unit
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_parse_number():
    from fractions import Fraction

    assert parse_number("12\\frac{3}{5}") == Fraction(63, 5)
    assert parse_number("-\\frac{40}{153}") == Fraction(-40, 153)
    assert parse_number("\\frac12") == Fraction(1, 2)
    assert parse_number("-0.25") == Fraction(-1, 4)
    assert parse_number("3/4") == Fraction(3, 4)
    assert parse_number("1/0") is None
    assert parse_number("\\sqrt{2}") is None
    assert parse_number("4a") is None


@pytest.mark.parametrize(
    "pred, ref, verdict",
    [
        ("1000", "\\$1,000", True),
        ("0.5", "\\frac{1}{2}", True),
        ("1/2", "\\dfrac{1}{2}", True),
        ("12.6", "12\\frac{3}{5}", True),
        ("3.0", "3", True),
        ("25", "25\\%", True),
        ("0.25", "25\\%", True),
        ("-3", "3", False),
        ("6287000", "6290000", False),
        ("0.333333", "\\frac{1}{3}", False),
        ("\\sqrt{2}", "\\frac{2}{\\sqrt{2}}", None),  # not plain numbers: math-verify decides
    ],
)
def test_quick_compare(pred, ref, verdict):
    assert quick_compare(pred, ref)[0] is verdict


@pytest.mark.parametrize(
    "pred, ref, equal",
    [
        ("0.5", "\\frac{1}{2}", True),
        ("\\dfrac{1}{2}", "\\frac12", True),
        ("1/2", "\\frac{1}{2}", True),
        ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True),
        ("-2+4a", "4a-2", True),
        ("\\pi \\cdot 7", "7\\pi", True),
        ("\\{2,1\\}", "\\{1,2\\}", True),
        ("\\sqrt{3}", "\\sqrt{2}", False),
        ("4a+2", "4a-2", False),
        ("C", "A", False),
    ],
)
def test_math_verify_equivalence_in_process(pred, ref, equal):
    # The main thread of the test process may use signal timeouts, as a worker does.
    assert math_verify_equal(pred, ref, timeout_s=5) is equal


def test_batched_call_uses_math_verify_for_latex(math_reward):
    refs = ["\\frac{\\sqrt{2}}{2}", "4a-2", "7\\pi", "\\sqrt{3}", "85", "85", "85"]
    completions = [
        "It is \\boxed{\\sqrt{2}/2}.",
        "So \\boxed{-2+4a}",
        "\\boxed{\\pi \\cdot 7}",
        "\\boxed{\\sqrt{2}}",
        "37 + 48 = 85. The final answer is \\boxed{85}.",
        "The answer is 84.",
        "I do not know.",
    ]
    out = math_reward([Sample(id=str(i), question="q", answer=r) for i, r in enumerate(refs)], completions)
    assert out.scores == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert out.info["correct"] == [True, True, True, False, True, False, False]
    assert out.info["extracted"] == ["\\sqrt{2}/2", "-2+4a", "\\pi \\cdot 7", "\\sqrt{2}", "85", "84", None]
    assert out.info["method"] == ["math_verify"] * 4 + ["exact", "numeric", "no_answer"]
    pool = math_reward._pool
    math_reward([Sample(id="0", question="q", answer="\\sqrt{8}")], ["\\boxed{2\\sqrt{2}}"])
    assert math_reward._pool is pool  # created once, reused
    assert pool._mp_context.get_start_method() == "spawn"  # safe next to torch's threads


def test_score_single_pair_and_boxed_reference(math_reward):
    assert math_reward.score("so \\boxed{\\dfrac{1}{2}}", "0.5") == 1.0
    assert math_reward.score("so \\boxed{2}", "\\boxed{2}") == 1.0  # reference given as a box
    assert math_reward.score("so \\boxed{3}", "2") == 0.0


def test_scores_and_format_score():
    reward = MathReward(correct_score=2.0, wrong_score=-1.0, format_score=0.1, use_math_verify=False)
    assert reward.score("\\boxed{5}", "5") == 2.0
    assert reward.score("\\boxed{6}", "5") == 0.1  # boxed but wrong
    assert reward.score("it is 6", "5") == -1.0  # wrong and not boxed
    assert reward.score("nothing", "5") == -1.0


def test_without_math_verify_latex_needs_string_equality():
    reward = MathReward(use_math_verify=False)
    out = reward([Sample(id="0", question="q", answer="4a-2")], ["\\boxed{-2+4a}"])
    assert out.scores == [0.0] and out.info["method"] == ["none"]
    assert reward._pool is None


def test_works_from_a_thread_and_after_torch_threads(math_reward):
    import torch

    torch.set_num_threads(2)
    torch.randn(256, 256) @ torch.randn(256, 256)
    results = []
    sample = Sample(id="0", question="q", answer="\\frac{\\sqrt{3}}{3}")
    worker = threading.Thread(target=lambda: results.append(math_reward([sample], ["\\boxed{1/\\sqrt{3}}"])))
    worker.start()
    worker.join(timeout=60)
    assert results and results[0].scores == [1.0] and results[0].info["method"] == ["math_verify"]


def test_bad_options():
    with pytest.raises(ValueError, match="reward.timeout_s"):
        MathReward(timeout_s=0.5)
    with pytest.raises(ValueError, match="reward.num_workers"):
        MathReward(num_workers=0)


# -- the pool's failure handling (functions run in spawned workers must be importable) ----------


def sleep_forever(pred, ref, timeout_s):
    time.sleep(600)


def crash_worker(pred, ref, timeout_s):
    import os

    os._exit(3)


def test_a_hung_worker_is_killed_and_scored_wrong_then_the_pool_restarts():
    reward = MathReward(timeout_s=1, num_workers=1)
    reward._verify_fn = sleep_forever
    reward._pool_grace_s = 1.0 - 4 * 1  # batch deadline = 4 * timeout_s + grace = 1 s
    try:
        start = time.monotonic()
        out = reward([Sample(id="0", question="q", answer="4a-2")], ["\\boxed{-2+4a}"])
        assert time.monotonic() - start < 30
        assert out.scores == [0.0] and out.info["method"] == ["timeout"]
        assert reward._pool is None
        reward._verify_fn, reward._pool_grace_s = math_verify_equal, 60.0
        assert reward.score("\\boxed{-2+4a}", "4a-2") == 1.0
    finally:
        reward.close()


def test_a_dead_worker_raises_a_clear_error_and_the_pool_restarts():
    reward = MathReward(num_workers=1)
    reward._verify_fn = crash_worker
    try:
        with pytest.raises(RuntimeError, match="worker process died.*__main__"):
            reward.score("\\boxed{-2+4a}", "4a-2")
        assert reward._pool is None
        reward._verify_fn = math_verify_equal
        assert reward.score("\\boxed{-2+4a}", "4a-2") == 1.0
    finally:
        reward.close()
