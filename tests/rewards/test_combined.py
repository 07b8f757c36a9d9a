"""reward=combined: weighted sum of components, each logged separately."""
import textwrap

import pytest

from rltrain.rewards import build_reward
from rltrain.rewards.base import score_safely
from rltrain.rewards.combined import CombinedReward
from rltrain.types import RewardOutput, Sample

FORMAT_MODULE = '''
def boxed(samples, completions):
    return [float("\\\\boxed{" in c) for c in completions]

def explode_on_bang(samples, completions):
    if any("!" in c for c in completions):
        raise RuntimeError("cannot score a !")
    return [1.0] * len(completions)
'''


@pytest.fixture
def fmt_module(tmp_path, monkeypatch):
    (tmp_path / "fmt_rewards.py").write_text(textwrap.dedent(FORMAT_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fmt_rewards"


SAMPLES = [Sample("a", "1+1?", answer="2")] * 3
COMPLETIONS = ["\\boxed{2}", "\\boxed{3}", "the answer is 2"]


def test_weighted_sum_and_separate_logs(fmt_module):
    reward = build_reward("combined", components=[
        {"name": "math", "weight": 1.0, "kwargs": {"use_math_verify": False}},
        {"name": "python", "weight": 0.1, "kwargs": {"fn": f"{fmt_module}:boxed"}, "label": "format"},
    ])
    try:
        out = reward(SAMPLES, COMPLETIONS)
    finally:
        reward.close()
    assert out.info["reward/math"] == [1.0, 0.0, 1.0]
    assert out.info["reward/format"] == [1.0, 1.0, 0.0]
    assert out.scores == pytest.approx([1.1, 0.1, 1.0])
    assert out.info["correct"] == [True, False, True]  # from the first component that has it
    assert out.info["math/correct"] == [True, False, True]
    assert "math/extracted" in out.info


def test_repeated_names_and_prebuilt_components():
    def const(value):
        return lambda samples, completions: RewardOutput(scores=[value] * len(completions),
                                                         info={"const/value": [value] * len(completions)})

    reward = CombinedReward([
        {"reward": const(1.0), "label": "const", "weight": 2.0},
        {"reward": const(3.0), "label": "const", "weight": -1.0},
    ])
    out = reward(SAMPLES, COMPLETIONS)
    assert out.scores == [-1.0, -1.0, -1.0]
    assert out.info["reward/const"] == [1.0] * 3 and out.info["reward/const_2"] == [3.0] * 3
    assert out.info["const/value"] == [1.0] * 3  # already prefixed with its own label: kept
    assert out.info["const_2/const/value"] == [3.0] * 3


def test_a_failing_component_fails_the_completion_through_score_safely(fmt_module):
    reward = CombinedReward([
        {"name": "python", "kwargs": {"fn": f"{fmt_module}:boxed"}},
        {"name": "python", "kwargs": {"fn": f"{fmt_module}:explode_on_bang"}},
    ])
    out = score_safely(reward, SAMPLES, ["\\boxed{2}", "no!", "y"], max_fail_fraction=0.5)
    assert out.scores == [2.0, 0.0, 1.0]
    assert out.info["failed"] == [False, True, False]
    assert out.info["reward/python_2"] == [1.0, None, 1.0]


def test_config_errors():
    with pytest.raises(ValueError, match="at least one"):
        CombinedReward([])
    with pytest.raises(ValueError, match="unknown key"):
        CombinedReward([{"name": "math", "wieght": 2}])
    with pytest.raises(ValueError, match="unknown reward.name='maths'"):
        CombinedReward([{"name": "maths"}])
    with pytest.raises(ValueError, match="cannot nest"):
        CombinedReward([{"name": "combined"}])


def test_hydra_containers_are_accepted(fmt_module):
    from omegaconf import OmegaConf

    components = OmegaConf.create([{"name": "python", "weight": 0.5, "kwargs": {"fn": f"{fmt_module}:boxed"}}])
    assert CombinedReward(components)(SAMPLES, COMPLETIONS).scores == [0.5, 0.5, 0.0]
