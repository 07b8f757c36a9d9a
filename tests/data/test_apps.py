"""data=apps: APPS-format rows from local files become Samples with their tests in meta."""
import json

import pytest

from rltrain.data.apps import apps, parse_input_output
from rltrain.data.base import DataError

ROWS = [
    {"problem_id": 7, "difficulty": "introductory", "question": "Print the sum of two integers.",
     "input_output": json.dumps({"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", "10\n"]}),
     "solutions": json.dumps(["a, b = map(int, input().split())\nprint(a + b)\n"]), "starter_code": ""},
    {"problem_id": 8, "difficulty": "interview", "question": "Return the product.",
     "input_output": {"fn_name": "mul", "inputs": [[2, 3], [4, 5]], "outputs": [[6], [20]]},
     "solutions": json.dumps(["def mul(a, b):\n    return a * b\n"]), "starter_code": "def mul(a, b):\n"},
    {"problem_id": 9, "difficulty": "competition", "question": "No tests here.", "input_output": "",
     "solutions": "[]"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_local_apps_rows_become_samples(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    test = write_jsonl(tmp_path / "test.jsonl", ROWS[:1])
    splits = apps(path=train, test_path=test)
    assert [s.id for s in splits.train] == ["train-0", "train-1"]  # the row without tests is dropped
    stdio, call = splits.train
    assert stdio.meta["input_output"] == {"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", "10\n"]}
    assert stdio.meta["problem_id"] == 7 and stdio.meta["difficulty"] == "introductory"
    assert "standard input" in stdio.question and stdio.question.startswith("Print the sum")
    assert stdio.question.endswith("```python code block.")
    assert stdio.solution.startswith("```python\na, b = map")
    assert call.meta["input_output"]["fn_name"] == "mul"
    assert "`mul` is called" in call.question and "Start from this code:\n```python\ndef mul(a, b):" in call.question
    assert len(splits.test) == 1


def test_difficulty_filter_and_limits(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    splits = apps(path=train, test_path=train, difficulties=["interview"], n_test=0)
    assert [s.meta["problem_id"] for s in splits.train] == [8] and splits.test == []
    with pytest.raises(ValueError, match="difficulties"):
        apps(path=train, difficulties=["easy"])


def test_malformed_tests_name_the_file_and_line(tmp_path):
    bad = dict(ROWS[0], input_output="{not json")
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], bad])
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: input_output is not valid JSON"):
        apps(path=path, test_path=path)
    with pytest.raises(ValueError, match="2 inputs but 1 outputs"):
        parse_input_output({"inputs": ["a", "b"], "outputs": ["c"]})


def test_reference_solutions_pass_reward_code(tmp_path):
    from rltrain.rewards.code import CodeReward

    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    samples = apps(path=path, test_path=path).train
    reward = CodeReward(num_workers=2, timeout=5.0)
    try:
        out = reward(samples, [s.solution for s in samples])
    finally:
        reward.close()
    assert out.scores == [1.0, 1.0]


def test_registered_as_data_apps(tmp_path):
    from rltrain.data import build_dataset

    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    assert len(build_dataset("apps", path=path, test_path=path, n_train=1).train) == 1
    with pytest.raises(ValueError, match="has no option"):
        build_dataset("apps", path=path, fn_name="x")
