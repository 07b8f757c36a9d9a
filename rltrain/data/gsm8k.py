"""``gsm8k``: grade-school math word problems (Cobbe et al., 2021), from the hub or local files.

The reference answer is the number after ``####`` in the ``answer`` field (thousands commas
removed). The worked solution is the reasoning before ``####``, with the calculator
annotations ``<<48/2=24>>`` removed and a final ``\\boxed{N}`` line, so SFT targets and RL
prompts ask for the same answer format.
"""
from __future__ import annotations

import re
from typing import Any

from rltrain.data.base import (
    DEFAULT_INSTRUCTION,
    DatasetSplits,
    field,
    samples_from_rows,
    with_instruction,
)
from rltrain.data.files import read_splits
from rltrain.types import Sample

_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")
_NUMBER_RE = re.compile(r"-?[\d,]*\.?\d+")


def parse_gsm8k_answer(text: str) -> tuple[str, str | None]:
    """``(final answer, worked solution)`` from a GSM8K ``answer`` field.

    A field that is just a number (some re-uploads store the final answer alone) gives
    ``(number, None)``.

    Raises:
        ValueError: no ``#### <answer>`` line and not a bare number.
    """
    if "####" not in text:
        if _NUMBER_RE.fullmatch(text.strip()):
            return text.strip().replace(",", ""), None
        raise ValueError("no '#### <answer>' in the answer field")
    reasoning, _, final = text.rpartition("####")
    final = final.strip().replace(",", "")
    if not final:
        raise ValueError("nothing after '####' in the answer field")
    reasoning = _CALCULATOR_RE.sub("", reasoning).strip()
    solution = f"{reasoning}\nThe final answer is \\boxed{{{final}}}.".strip()
    return final, solution


def gsm8k(
    *,
    path: str | None = None,
    test_path: str | None = None,
    test_fraction: float = 0.1,
    hub_id: str | None = "openai/gsm8k",
    hub_config: str | None = "main",
    train_split: str = "train",
    test_split: str | None = "test",
    question_key: str = "question",
    answer_key: str = "answer",
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    instruction: str = DEFAULT_INSTRUCTION,
) -> DatasetSplits[Sample]:
    """GSM8K-format problems.

    Args:
        path: local train file (.jsonl/.json/.parquet); when set, the hub is not used.
        test_path: local test file; when unset, ``test_fraction`` of ``path`` is held out.
        test_fraction: held-out share when no test file/split is given.
        hub_id, hub_config, train_split, test_split: the hub dataset (``test_split=None``:
            hold out ``test_fraction`` of the train split).
        question_key, answer_key: column names.
        n_train, n_test: keep only the first n of each split (None = all).
        seed: seed of the ``test_fraction`` split.
        instruction: appended to each question after a blank line ("" = none).
    """
    train_rows, test_rows = read_splits(
        path=path, test_path=test_path, test_fraction=test_fraction, hub_id=hub_id,
        hub_config=hub_config, train_split=train_split, test_split=test_split, seed=seed,
    )

    def to_sample(row: dict[str, Any]) -> Sample:
        question = field(row, question_key, option="question_key")
        answer, solution = parse_gsm8k_answer(field(row, answer_key, option="answer_key"))
        return Sample(id="", question=with_instruction(question, instruction), answer=answer,
                      solution=solution)

    return samples_from_rows(train_rows, test_rows, to_sample, n_train=n_train, n_test=n_test)
