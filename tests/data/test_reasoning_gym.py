"""data=reasoning_gym and reward=reasoning_gym: tasks mixed by weight, held-out questions never in
training, the <answer> extraction, the task's own scorer with its partial credit, binarize."""
import re

import pytest

pytest.importorskip("reasoning_gym")

from rltrain.data.base import DataError  # noqa: E402
from rltrain.data.reasoning_gym import reasoning_gym  # noqa: E402
from rltrain.rewards.reasoning_gym import ReasoningGymReward, extract  # noqa: E402


def test_tasks_by_weight_and_a_disjoint_held_out_split():
    sp = reasoning_gym(tasks=["chain_sum", {"name": "leg_counting", "weight": 3, "config": {"max_animals": 3}}],
                       size=40, n_test=8, seed=0)
    tasks = [s.meta["task"] for s in sp.train]
    assert tasks.count("chain_sum") == 10 and tasks.count("leg_counting") == 30
    assert len(sp.test) == 16
    assert not {s.question for s in sp.train} & {s.question for s in sp.test}
    assert all(s.question.endswith("between <answer> and </answer>.") for s in sp.train)
    again = reasoning_gym(tasks=["chain_sum"], size=10, n_test=8, seed=0)
    assert [s.question for s in again.test] == [s.question for s in sp.test if s.meta["task"] == "chain_sum"]


@pytest.mark.parametrize("tasks, says", [([], "data.tasks is empty"), (["no_such_task"], "'no_such_task'"),
                                         ([{"name": "chain_sum", "wieght": 2}], "unknown keys ['wieght']")])
def test_bad_tasks_are_data_errors(tasks, says):
    with pytest.raises(DataError, match=re.escape(says)):
        reasoning_gym(tasks=tasks, size=4, n_test=0)


def test_extract_takes_the_last_answer():
    assert extract("<answer> 1 </answer> then <answer>2</answer>") == "2"
    assert extract("the answer is 2") is None


def test_scores_partial_credit_and_binarize():
    sp = reasoning_gym(tasks=["spell_backward"], size=2, n_test=2, seed=0)
    s = sp.test[0]
    near = s.answer[:-1] + "x"  # one letter wrong: the task gives partial credit
    completions = [f"<answer>{s.answer}</answer>", f"<answer>{near}</answer>", s.answer]
    raw = ReasoningGymReward()([s] * 3, completions)
    assert raw.scores[0] == 1.0 and 0 < raw.scores[1] < 1 and raw.scores[2] == 0.0
    assert raw.info["correct"] == [True, False, False]
    binary = ReasoningGymReward(binarize=True)([s] * 3, completions)
    assert binary.scores == [1.0, 0.0, 0.0]
    assert binary.info["reasoning_gym/raw_score"] == raw.scores  # logged either way


def test_solution_is_the_answer_in_tags_and_scores_one():
    """algo=sft data=reasoning_gym trains on the items' own answers in the tags the reward reads."""
    from rltrain.data.sft import to_sft_pairs

    sp = reasoning_gym(tasks=["chain_sum", "leg_counting"], size=6, n_test=2, seed=0)
    pairs = to_sft_pairs(sp.train)
    assert [p.response for p in pairs] == [f"<answer>{s.answer}</answer>" for s in sp.train]
    assert ReasoningGymReward(binarize=True)(sp.train, [p.response for p in pairs]).scores == [1.0] * 6
