"""``apps``: APPS-format programming problems (Hendrycks et al., 2021) for ``reward=code``.

Each row has ``question``, ``input_output`` (a JSON object, or its JSON text, with ``inputs``,
``outputs`` and an optional ``fn_name`` for call-based problems), and optionally
``starter_code``, ``solutions`` (JSON list of reference programs), ``difficulty``
(introductory | interview | competition) and ``problem_id``. The same columns serve TACO and
CodeContests conversions.

The tests go to ``Sample.meta["input_output"]`` (parsed); the prompt is the problem statement,
the starter code if any, how the program is run (stdin/stdout or a function call), and the
answer-format instruction. ``Sample.solution`` is the first reference program as a ```python
block, the same format ``reward=code`` extracts, so SFT targets and RL prompts agree.

Rows without tests (APPS train has some) are dropped, counted in the log; a row whose
``input_output`` is not valid JSON is an error naming the file and line.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from rltrain.data.base import DataError, DatasetSplits, Row, field, samples_from_rows, with_instruction
from rltrain.data.files import read_splits
from rltrain.types import Sample

log = logging.getLogger(__name__)

CODE_INSTRUCTION = "Write your solution in Python 3 inside one ```python code block."
DIFFICULTIES = ("introductory", "interview", "competition")


def parse_input_output(value: Any) -> dict[str, Any] | None:
    """The tests of a row as ``{"inputs", "outputs", "fn_name"?}``; None when it has none.

    Raises:
        ValueError: not JSON, not an object, or inputs and outputs of different lengths.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"input_output is not valid JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"input_output must be a JSON object, got {type(value).__name__}")
    inputs, outputs = value.get("inputs") or [], value.get("outputs") or []
    if not inputs:
        return None
    if len(inputs) != len(outputs):
        raise ValueError(f"input_output has {len(inputs)} inputs but {len(outputs)} outputs")
    tests = {"inputs": list(inputs), "outputs": list(outputs)}
    if value.get("fn_name"):
        tests["fn_name"] = str(value["fn_name"])
    return tests


def _first_solution(value: Any) -> str | None:
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return value  # a single program stored as plain text
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0]
    return None


def format_question(question: str, tests: dict[str, Any], starter_code: str | None, instruction: str | None) -> str:
    """The prompt text of one problem (before any chat template)."""
    parts = [question.rstrip()]
    if starter_code and starter_code.strip():
        parts.append(f"Start from this code:\n```python\n{starter_code.rstrip()}\n```")
    if "fn_name" in tests:
        parts.append(
            f"Your code is imported and `{tests['fn_name']}` is called with the test arguments "
            "(as a top-level function or a method of `class Solution`); its return value is checked."
        )
    else:
        parts.append("Your program reads the input from standard input and prints the answer to standard output.")
    return with_instruction("\n\n".join(parts), instruction)


def apps(
    *,
    path: str | None = None,
    test_path: str | None = None,
    test_fraction: float = 0.1,
    hub_id: str | None = "codeparrot/apps",
    hub_config: str | None = "all",
    train_split: str = "train",
    test_split: str | None = "test",
    question_key: str = "question",
    tests_key: str = "input_output",
    difficulties: list[str] | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    instruction: str = CODE_INSTRUCTION,
) -> DatasetSplits[Sample]:
    """APPS-format problems with their tests in ``meta["input_output"]``.

    Args:
        path: local train file (.jsonl/.json/.parquet); when set, the hub is not used.
        test_path: local test file; when unset, ``test_fraction`` of ``path`` is held out.
        test_fraction: held-out share when no test file/split is given.
        hub_id, hub_config, train_split, test_split: the hub dataset (``test_split=None``:
            hold out ``test_fraction`` of the train split).
        question_key, tests_key: column names of the statement and the tests.
        difficulties: keep only these difficulty levels (None = all).
        n_train, n_test: keep only the first n of each split (None = all), after filtering.
        seed: seed of the ``test_fraction`` split.
        instruction: appended to each prompt after a blank line ("" = none).
    """
    if difficulties is not None:
        unknown = sorted(set(difficulties) - set(DIFFICULTIES))
        if unknown:
            raise ValueError(f"data.difficulties has unknown level(s) {unknown}; valid: {', '.join(DIFFICULTIES)}")
    train_rows, test_rows = read_splits(
        path=path, test_path=test_path, test_fraction=test_fraction, hub_id=hub_id,
        hub_config=hub_config, train_split=train_split, test_split=test_split, seed=seed,
    )

    def keep(rows: list[Row], split: str) -> list[Row]:
        kept, no_tests = [], 0
        for row in rows:
            if difficulties is not None and row.data.get("difficulty") not in difficulties:
                continue
            if tests_key not in row.data:
                raise DataError(f"{row.where}: missing field {tests_key!r}; set data.tests_key=<column>")
            try:
                tests = parse_input_output(row.data[tests_key])
            except ValueError as exc:
                raise DataError(f"{row.where}: {exc}") from exc
            if tests is None:
                no_tests += 1
                continue
            kept.append(Row(where=row.where, data={**row.data, tests_key: tests}))
        if no_tests:
            log.info("apps %s: dropped %d problems without tests", split, no_tests)
        return kept

    def to_sample(row: dict[str, Any]) -> Sample:
        tests = row[tests_key]
        question = format_question(field(row, question_key, option="question_key"), tests,
                                   row.get("starter_code"), instruction)
        solution = _first_solution(row.get("solutions"))
        meta = {"input_output": tests, "difficulty": row.get("difficulty"),
                "problem_id": row.get("problem_id"), "starter_code": row.get("starter_code") or None}
        return Sample(id="", question=question, answer="",
                      solution=f"```python\n{solution.rstrip()}\n```" if solution else None, meta=meta)

    return samples_from_rows(keep(train_rows, "train"), keep(test_rows, "test"), to_sample,
                             n_train=n_train, n_test=n_test)
