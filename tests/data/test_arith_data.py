"""arith: the default task's exact text, determinism, disjoint splits, correct answers."""
import re

import pytest

from rltrain.data import build_dataset
from rltrain.data.arith import LEVELS, arith

DEFAULT_TASK = re.compile(r"What is (\d{2}) \+ (\d{2})\? Give the final answer as \\boxed\{N\}\.")


def _evaluate_expression(text: str) -> int:
    """Independent evaluator: × binds tighter than + and -, then left to right."""
    tokens = text.replace("×", " × ").split()
    terms, ops = [], []
    i = 0
    while i < len(tokens):
        value = int(tokens[i])
        while i + 2 < len(tokens) and tokens[i + 1] == "×":
            value *= int(tokens[i + 2])
            i += 2
        terms.append(value)
        if i + 1 < len(tokens):
            ops.append(tokens[i + 1])
        i += 2
    total = terms[0]
    for op, value in zip(ops, terms[1:]):
        total = total + value if op == "+" else total - value
    return total


def _evaluate_word_problem(text: str) -> int:
    """Independent reading of the word problem, sentence by sentence."""
    total = None
    for sentence in re.split(r"(?<=[.?])\s+", text):
        if m := re.fullmatch(r"\w+ has (\d+) \w+\.", sentence):
            total = int(m.group(1))
        elif m := re.fullmatch(r"\w+ buys (\d+) more \w+\.", sentence):
            total += int(m.group(1))
        elif m := re.fullmatch(r"\w+ gives (\d+) \w+ to a friend\.", sentence):
            total -= int(m.group(1))
        elif m := re.fullmatch(r"\w+ buys (\d+) packs with (\d+) \w+ in each pack\.", sentence):
            total += int(m.group(1)) * int(m.group(2))
        elif sentence.startswith("How many"):
            return total
        else:
            raise AssertionError(f"unparsed sentence {sentence!r}")
    raise AssertionError(f"no question in {text!r}")


def _recompute(question: str) -> int:
    body = question.removesuffix(" Give the final answer as \\boxed{N}.")
    if m := re.fullmatch(r"What is ([\d+\-× ]+)\?", body):
        return _evaluate_expression(m.group(1))
    return _evaluate_word_problem(body)


def test_difficulty_1_is_the_two_digit_addition_task():
    splits = arith(difficulty=1, n_train=300, n_test=50, seed=3)
    for sample in splits.train + splits.test:
        m = DEFAULT_TASK.fullmatch(sample.question)
        assert m, sample.question
        assert sample.answer == str(int(m.group(1)) + int(m.group(2)))
        assert sample.solution.endswith(f"\\boxed{{{sample.answer}}}.")


def test_difficulty_0_is_addition_up_to_20_with_all_400_questions_reachable():
    splits = arith(difficulty=0, n_train=200, n_test=200, seed=0)
    pairs = set()
    for sample in splits.train + splits.test:
        m = re.fullmatch(r"What is (\d+) \+ (\d+)\? Give the final answer as \\boxed\{N\}\.", sample.question)
        assert m, sample.question
        a, b = int(m.group(1)), int(m.group(2))
        assert 1 <= a <= 20 and 1 <= b <= 20 and sample.answer == str(a + b)
        pairs.add((a, b))
    assert len(pairs) == 400  # train and test disjoint, together every question
    with pytest.raises(ValueError, match="lower data.n_train"):
        arith(difficulty=0, n_train=2000, n_test=200, seed=0)


@pytest.mark.parametrize("difficulty", sorted(LEVELS))
def test_answers_match_an_independent_reading_of_the_question(difficulty):
    splits = arith(difficulty=difficulty, n_train=200, n_test=20, seed=1)
    for sample in splits.train + splits.test:
        expected = _recompute(sample.question)
        assert expected >= 0
        assert sample.answer == str(expected), sample.question
        assert sample.solution.endswith(f"The final answer is \\boxed{{{expected}}}.")
        # every "a op b = c." line of the worked solution is arithmetic that holds
        for a, op, b, c in re.findall(r"(\d+) ([+\-×]) (\d+) = (\d+)\.", sample.solution):
            a, b, c = int(a), int(b), int(c)
            assert {"+": a + b, "-": a - b, "×": a * b}[op] == c, sample.solution


def test_levels_get_harder():
    questions = {d: arith(difficulty=d, n_train=50, n_test=0).train for d in LEVELS}
    assert all(" - " in q.question or " + " in q.question for q in questions[2])
    assert any(" - " in q.question for q in questions[2])
    assert all(q.question.count(" + ") + q.question.count(" - ") == 2 for q in questions[3])
    assert all("×" in q.question for q in questions[4])
    assert all(q.question.endswith("have now? Give the final answer as \\boxed{N}.") for q in questions[5])


def test_same_arguments_same_samples_and_seed_changes_them():
    a = arith(difficulty=3, n_train=100, n_test=20, seed=7)
    b = arith(difficulty=3, n_train=100, n_test=20, seed=7)
    c = arith(difficulty=3, n_train=100, n_test=20, seed=8)
    assert a == b
    assert [s.question for s in a.train] != [s.question for s in c.train]
    assert [s.id for s in a.train[:2]] == ["train-0", "train-1"]


def test_train_and_test_are_disjoint_even_when_collisions_are_likely():
    # 3000 + 1000 draws from 8100 possible questions: ~370 collisions without the exclusion.
    splits = arith(difficulty=1, n_train=3000, n_test=1000, seed=0)
    train = [s.question for s in splits.train]
    test = [s.question for s in splits.test]
    assert len(train) == 3000 and len(test) == 1000
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test)


def test_test_split_does_not_depend_on_n_train():
    small = arith(difficulty=2, n_train=10, n_test=30, seed=4)
    large = arith(difficulty=2, n_train=500, n_test=30, seed=4)
    assert small.test == large.test


def test_instruction_is_configurable():
    sample = arith(n_train=1, n_test=0, instruction="").train[0]
    assert sample.question.endswith("?")
    sample = arith(n_train=1, n_test=0, instruction="Answer in \\boxed{}.").train[0]
    assert sample.question.endswith("? Answer in \\boxed{}.")


def test_bad_arguments_name_the_key():
    with pytest.raises(ValueError, match="data.difficulty"):
        arith(difficulty=9)
    with pytest.raises(ValueError, match="data.n_train"):
        arith(difficulty=1, n_train=9000, n_test=0)  # only 8100 distinct questions exist


def test_registry_builds_arith_and_rejects_unknown_names_and_options():
    splits = build_dataset("arith", difficulty=1, n_train=4, n_test=2, seed=0)
    assert len(splits.train) == 4 and len(splits.test) == 2
    with pytest.raises(ValueError, match="apps, arith, gsm8k, math, preference, qa, reasoning_gym, synthetic_prefs"):
        build_dataset("gsm9k")
    with pytest.raises(ValueError, match="no option.*n_trian.*difficulty, n_train"):
        build_dataset("arith", n_trian=4)
