"""``math`` (the data option): competition math problems (Hendrycks et al., 2021, "MATH"), hub or local files.

The reference answer is the row's ``answer`` column when it has one (MATH-500 and many
re-uploads), else the content of the last ``\\boxed{…}`` in ``solution`` (nested braces
matched, e.g. ``\\boxed{\\frac{1}{2}}``). ``level`` and ``type`` are kept in ``meta``.

The original ``hendrycks/competition_math`` hub repository is no longer available; the default
``DigitalLearningGmbH/MATH-lighteval`` holds the same 7,500 train / 5,000 test problems.
"""
from __future__ import annotations

from typing import Any

from rltrain.data.base import DatasetSplits, field, samples_from_rows, with_instruction
from rltrain.data.files import read_splits
from rltrain.rewards.math import extract_boxed
from rltrain.types import Sample

MATH_INSTRUCTION = "Put the final answer within \\boxed{}."
_META_KEYS = ("level", "type", "subject", "unique_id")


def competition_math(
    *,
    path: str | None = None,
    test_path: str | None = None,
    test_fraction: float = 0.1,
    hub_id: str | None = "DigitalLearningGmbH/MATH-lighteval",
    hub_config: str | None = None,
    train_split: str = "train",
    test_split: str | None = "test",
    question_key: str = "problem",
    answer_key: str = "answer",
    solution_key: str = "solution",
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    instruction: str = MATH_INSTRUCTION,
) -> DatasetSplits[Sample]:
    """MATH-format problems.

    Args:
        path, test_path, test_fraction, hub_id, hub_config, train_split, test_split: the
            source, as for ``gsm8k``.
        question_key: the problem column.
        answer_key: the final-answer column; used when present and non-empty.
        solution_key: the worked-solution column; its last ``\\boxed{}`` is the answer when
            the row has no ``answer_key`` column.
        n_train, n_test: keep only the first n of each split (None = all).
        seed: seed of the ``test_fraction`` split.
        instruction: appended to each problem after a blank line ("" = none).
    """
    train_rows, test_rows = read_splits(
        path=path, test_path=test_path, test_fraction=test_fraction, hub_id=hub_id,
        hub_config=hub_config, train_split=train_split, test_split=test_split, seed=seed,
    )

    def to_sample(row: dict[str, Any]) -> Sample:
        question = field(row, question_key, option="question_key")
        solution = str(row[solution_key]) if row.get(solution_key) else None
        if row.get(answer_key) not in (None, ""):
            answer = field(row, answer_key, option="answer_key")
        elif solution is None:
            raise KeyError(
                f"neither field {answer_key!r} nor {solution_key!r} "
                f"(fields: {', '.join(map(str, row))}); set data.answer_key or data.solution_key"
            )
        else:
            boxed = extract_boxed(solution)
            if boxed is None or not boxed.strip():
                raise ValueError(f"no \\boxed{{...}} answer in field {solution_key!r}")
            answer = boxed.strip()
        meta = {key: row[key] for key in _META_KEYS if row.get(key) is not None}
        return Sample(id="", question=with_instruction(question, instruction), answer=answer,
                      solution=solution, meta=meta)

    return samples_from_rows(train_rows, test_rows, to_sample, n_train=n_train, n_test=n_test)
