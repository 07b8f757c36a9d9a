"""The reward registry and score_safely's failure policy."""
import math

import pytest

from rltrain.rewards import REWARDS, RewardFailureError, build_reward, score_safely
from rltrain.rewards.math import MathReward
from rltrain.types import RewardOutput, Sample


def test_registry_lists_every_reward_lazily():
    assert REWARDS == {
        "math": "rltrain.rewards.math:MathReward",
        "code": "rltrain.rewards.code:CodeReward",
        "judge": "rltrain.rewards.judge:JudgeReward",
        "classifier": "rltrain.rewards.classifier:ClassifierReward",
        "python": "rltrain.rewards.python_fn:PythonReward",
        "combined": "rltrain.rewards.combined:CombinedReward",
        "reasoning_gym": "rltrain.rewards.reasoning_gym:ReasoningGymReward",
    }


def test_build_reward_constructs_with_options_and_rejects_unknown_names():
    reward = build_reward("math", format_score=0.1, use_math_verify=False)
    assert isinstance(reward, MathReward) and reward.format_score == 0.1
    with pytest.raises(ValueError, match="classifier, code, combined, judge, math, python"):
        build_reward("maths")


class LengthReward:
    """Score = len(completion); raises on completions containing "boom"."""

    def __init__(self):
        self.calls = 0

    def __call__(self, samples, completions):
        self.calls += 1
        for c in completions:
            if "boom" in c:
                raise RuntimeError(f"cannot score {c!r}")
        scores = [float("nan") if c == "nan" else float(len(c)) for c in completions]
        return RewardOutput(scores=scores, info={"length": [len(c) for c in completions]})


SAMPLES = [Sample(id=str(i), question="q", answer="a") for i in range(4)]


def test_a_good_batch_is_scored_in_one_call():
    reward = LengthReward()
    out = score_safely(reward, SAMPLES, ["a", "bb", "ccc", "dddd"], max_fail_fraction=0.0)
    assert out.scores == [1.0, 2.0, 3.0, 4.0]
    assert out.info == {"length": [1, 2, 3, 4], "failed": [False] * 4, "error": [None] * 4}
    assert reward.calls == 1


def test_a_raising_completion_scores_zero_and_is_marked_failed():
    reward = LengthReward()
    out = score_safely(reward, SAMPLES, ["a", "boom", "ccc", "dddd"], max_fail_fraction=0.25)
    assert out.scores == [1.0, 0.0, 3.0, 4.0]
    assert out.info["failed"] == [False, True, False, False]
    assert out.info["error"][1] == "RuntimeError: cannot score 'boom'"
    assert out.info["error"][0] is None
    assert out.info["length"] == [1, None, 3, 4]
    assert reward.calls == 1 + 4  # the batch, then one call per completion


def test_non_finite_scores_count_as_failed():
    out = score_safely(LengthReward(), SAMPLES[:2], ["nan", "bb"], max_fail_fraction=0.5)
    assert out.scores == [0.0, 2.0]
    assert out.info["failed"] == [True, False]
    assert "non-finite" in out.info["error"][0]
    assert all(math.isfinite(s) for s in out.scores)


def test_too_many_failures_raise_with_count_first_error_and_key():
    with pytest.raises(RewardFailureError) as info:
        score_safely(LengthReward(), SAMPLES, ["boom1", "bb", "boom3", "d"], max_fail_fraction=0.25)
    message = str(info.value)
    assert "2/4 completions failed" in message
    assert "cannot score 'boom1'" in message
    assert "reward.max_fail_fraction" in message


def test_wrong_number_of_scores_fails_the_batch_then_each_completion():
    def one_score(samples, completions):
        return RewardOutput(scores=[1.0])

    out = score_safely(one_score, SAMPLES[:2], ["x", "y"], max_fail_fraction=0.0)
    assert out.scores == [1.0, 1.0]  # one by one, one score each is right

    def no_scores(samples, completions):
        return RewardOutput(scores=[])

    with pytest.raises(RewardFailureError, match="0 scores for 1 completions"):
        score_safely(no_scores, SAMPLES[:2], ["x", "y"], max_fail_fraction=0.5)


def test_empty_batch_and_argument_checks():
    assert score_safely(LengthReward(), [], [], max_fail_fraction=0.0).scores == []
    with pytest.raises(ValueError, match="max_fail_fraction"):
        score_safely(LengthReward(), SAMPLES[:1], ["a"], max_fail_fraction=1.5)
    with pytest.raises(ValueError, match="1 samples for 2 completions"):
        score_safely(LengthReward(), SAMPLES[:1], ["a", "b"], max_fail_fraction=0.0)
