"""reward=python: import any callable; bad paths fail clearly; exceptions go to score_safely."""
import textwrap

import pytest

from rltrain.rewards import build_reward
from rltrain.rewards.base import RewardFailureError, score_safely
from rltrain.rewards.python_fn import PythonReward, import_callable
from rltrain.types import RewardOutput, Sample

USER_MODULE = '''
from rltrain.types import RewardOutput

def length(samples, completions, scale=1.0):
    return [scale * len(c) for c in completions]

def with_info(samples, completions):
    return RewardOutput(scores=[1.0] * len(completions), info={"id": [s.id for s in samples]})

def per_item(sample, completion):
    return float(completion == sample.answer)

def explode_on_x(samples, completions):
    if any("x" in c for c in completions):
        raise RuntimeError("cannot score an x")
    return [1.0] * len(completions)

def wrong_length(samples, completions):
    return [1.0]

def not_numbers(samples, completions):
    return "high"

class Scorer:
    @staticmethod
    def score(samples, completions):
        return [0.5] * len(completions)

NOT_CALLABLE = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


SAMPLES = [Sample("a", "q", answer="yes"), Sample("b", "q", answer="no"), Sample("c", "q", answer="no")]


def test_batched_per_item_kwargs_and_reward_output(user_module):
    out = build_reward("python", fn=f"{user_module}:length", fn_kwargs={"scale": 2.0})(SAMPLES, ["ab", "", "xyz"])
    assert out.scores == [4.0, 0.0, 6.0]
    out = PythonReward(f"{user_module}:with_info")(SAMPLES, ["", "", ""])
    assert out.info == {"id": ["a", "b", "c"]}
    out = PythonReward(f"{user_module}:per_item", per_item=True)(SAMPLES, ["yes", "yes", "no"])
    assert out.scores == [1.0, 0.0, 1.0]
    assert PythonReward(f"{user_module}:Scorer.score")(SAMPLES, ["", "", ""]).scores == [0.5] * 3


def test_bad_import_paths_fail_with_clear_messages(user_module):
    with pytest.raises(ValueError, match="package.module:function"):
        PythonReward("my_rewards.length")
    with pytest.raises(ImportError, match=r"reward.fn='no_such_pkg.mod:f': cannot import module 'no_such_pkg.mod'"):
        PythonReward("no_such_pkg.mod:f")
    with pytest.raises(AttributeError, match="has no attribute 'missing'"):
        PythonReward(f"{user_module}:missing")
    with pytest.raises(TypeError, match="not a callable"):
        import_callable(f"{user_module}:NOT_CALLABLE")


def test_bad_return_values_raise(user_module):
    with pytest.raises(ValueError, match="returned 1 scores for 3"):
        PythonReward(f"{user_module}:wrong_length")(SAMPLES, ["", "", ""])
    with pytest.raises(TypeError, match="list of floats or a RewardOutput"):
        PythonReward(f"{user_module}:not_numbers")(SAMPLES, ["", "", ""])


def test_exceptions_inside_are_isolated_by_score_safely(user_module):
    reward = PythonReward(f"{user_module}:explode_on_x")
    completions = ["ok", "x marks", "fine", "xx"]
    samples = [SAMPLES[0]] * 4
    out = score_safely(reward, samples, completions, max_fail_fraction=0.5)
    assert out.scores == [1.0, 0.0, 1.0, 0.0]
    assert out.info["failed"] == [False, True, False, True]
    assert sum(out.info["failed"]) == 2
    assert "cannot score an x" in out.info["error"][1]
    with pytest.raises(RewardFailureError, match="2/4 completions failed"):
        score_safely(reward, samples, completions, max_fail_fraction=0.25)
    assert isinstance(reward(samples[:1], ["ok"]), RewardOutput)
