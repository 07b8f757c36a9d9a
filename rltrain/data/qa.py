"""``qa``: free-form question answering in any domain, for ``reward=judge``.

Any dataset with a question column and a reference-answer column (names configurable), from
the hub or local files: the multi-subject RLVR setting of "Crossing the Reward Bridge"
(docs/algorithms.md §7): medicine, chemistry, economics and so on, where no rule-based verifier
exists and a generative judge compares the response with the reference.

A reference stored as a list of acceptable answers is joined with " OR " into
``Sample.answer`` (the judge sees every alternative). Extra columns named in ``meta_keys``
(e.g. ``subject``) are copied into ``Sample.meta`` for per-domain metrics.
"""
from __future__ import annotations

from typing import Any

from rltrain.data.base import DatasetSplits, field, samples_from_rows, with_instruction
from rltrain.data.files import read_splits
from rltrain.types import Sample

QA_INSTRUCTION = "Reason briefly, then state your final answer on the last line."


def reference_answer(row: dict[str, Any], key: str) -> str:
    """The reference answer of a row as text; a list of alternatives is joined with " OR "."""
    value = row.get(key)
    if isinstance(value, list):
        parts = [str(v).strip() for v in value if str(v).strip()]
        if not parts:
            raise ValueError(f"field {key!r} is an empty list")
        return " OR ".join(parts)
    return field(row, key, option="answer_key")


def qa(
    *,
    path: str | None = None,
    test_path: str | None = None,
    test_fraction: float = 0.1,
    hub_id: str | None = None,
    hub_config: str | None = None,
    train_split: str = "train",
    test_split: str | None = None,
    question_key: str = "question",
    answer_key: str = "answer",
    meta_keys: list[str] | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    instruction: str = QA_INSTRUCTION,
) -> DatasetSplits[Sample]:
    """Question / reference-answer pairs.

    Args:
        path: local train file (.jsonl/.json/.parquet); when set, the hub is not used.
        test_path: local test file; when unset, ``test_fraction`` of ``path`` is held out.
        test_fraction: held-out share when no test file/split is given.
        hub_id, hub_config, train_split, test_split: the hub dataset (``test_split=None``:
            hold out ``test_fraction`` of the train split).
        question_key, answer_key: column names.
        meta_keys: extra columns copied into ``Sample.meta`` (missing ones are None).
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
        meta = {key: row.get(key) for key in meta_keys or ()}
        return Sample(id="", question=with_instruction(question, instruction),
                      answer=reference_answer(row, answer_key), meta=meta)

    return samples_from_rows(train_rows, test_rows, to_sample, n_train=n_train, n_test=n_test)
