"""Preference data for DPO: ``(prompt, chosen, rejected)`` triples.

Two builders:

- ``preference``: local jsonl/json/parquet files or a hub dataset with ``prompt``, ``chosen``
  and ``rejected`` columns. Each value is plain text or a list of chat messages
  ``{"role": ..., "content": ...}``. Rows without a prompt column whose chosen and rejected
  are conversations (Anthropic-HH style) have their shared leading messages split off as the
  prompt.
- ``synthetic_prefs``: offline pairs from ``arith``; chosen = the correct worked solution,
  rejected = the same steps with a wrong final result.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field as dataclass_field
from typing import Any, Union

from rltrain.data.arith import arith_problems
from rltrain.data.base import DEFAULT_INSTRUCTION, DatasetSplits, samples_from_rows, with_instruction
from rltrain.data.files import read_splits

Messages = list[dict[str, str]]
Text = Union[str, Messages]
ROLES = ("system", "user", "assistant")


@dataclass
class PreferencePair:
    """One DPO example.

    Attributes:
        prompt: the prompt, as plain text or chat messages.
        chosen: the preferred response (text, or assistant message(s)), without the prompt.
        rejected: the dispreferred response, same form as ``chosen``.
        id: ``"<split>-<index>"``.
        meta: extras (e.g. the reference ``answer`` of a synthetic pair).
    """

    prompt: Text
    chosen: Text
    rejected: Text
    id: str = ""
    meta: dict[str, Any] = dataclass_field(default_factory=dict)


def _check_text(value: Any, key: str) -> Text:
    """``value`` if it is non-empty text or a list of well-formed messages, else raise."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"field {key!r} is empty")
        return value
    if not isinstance(value, list) or not value:
        raise TypeError(
            f"field {key!r} must be text or a non-empty list of {{role, content}} messages, "
            f"got {type(value).__name__}"
        )
    for i, message in enumerate(value):
        if not (isinstance(message, dict) and isinstance(message.get("content"), str)
                and message.get("role") in ROLES):
            raise ValueError(
                f"field {key!r} message {i} must be {{'role': one of {ROLES}, 'content': str}}, "
                f"got {message!r:.120}"
            )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _split_shared_prompt(chosen: Messages, rejected: Messages) -> tuple[Messages, Messages, Messages]:
    """Split two conversations into (shared leading messages, chosen rest, rejected rest)."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise ValueError("no prompt field, and chosen/rejected share no leading messages")
    return chosen[:n], chosen[n:], rejected[n:]


def preference(
    *,
    path: str | None = None,
    test_path: str | None = None,
    test_fraction: float = 0.1,
    hub_id: str | None = None,
    hub_config: str | None = None,
    train_split: str = "train",
    test_split: str | None = "test",
    prompt_key: str = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
) -> DatasetSplits[PreferencePair]:
    """Preference pairs from local files (``path``) or a hub dataset (``hub_id``).

    Args:
        path, test_path, test_fraction, hub_id, hub_config, train_split, test_split: the
            source, as for ``gsm8k`` (there is no default hub dataset).
        prompt_key, chosen_key, rejected_key: column names.
        n_train, n_test: keep only the first n of each split (None = all).
        seed: seed of the ``test_fraction`` split.
    """
    train_rows, test_rows = read_splits(
        path=path, test_path=test_path, test_fraction=test_fraction, hub_id=hub_id,
        hub_config=hub_config, train_split=train_split, test_split=test_split, seed=seed,
    )

    def to_pair(row: dict[str, Any]) -> PreferencePair:
        for key, option in ((chosen_key, "chosen_key"), (rejected_key, "rejected_key")):
            if key not in row:
                raise KeyError(f"missing field {key!r} (fields: {', '.join(map(str, row))}); "
                               f"set data.{option}=<column> if the column has another name")
        chosen = _check_text(row[chosen_key], chosen_key)
        rejected = _check_text(row[rejected_key], rejected_key)
        if row.get(prompt_key) is not None:
            prompt = _check_text(row[prompt_key], prompt_key)
        elif isinstance(chosen, list) and isinstance(rejected, list):
            prompt, chosen, rejected = _split_shared_prompt(chosen, rejected)
        else:
            raise KeyError(f"missing field {prompt_key!r} (fields: {', '.join(map(str, row))}); "
                           "set data.prompt_key=<column> if the column has another name")
        return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected)

    return samples_from_rows(train_rows, test_rows, to_pair, n_train=n_train, n_test=n_test)


def synthetic_prefs(
    *,
    difficulty: int = 1,
    n_train: int = 1000,
    n_test: int = 200,
    seed: int = 0,
    instruction: str = DEFAULT_INSTRUCTION,
) -> DatasetSplits[PreferencePair]:
    """Offline preference pairs built from ``arith`` problems (same questions as ``arith``
    with the same arguments).

    chosen = the correct worked solution; rejected = the same solution whose last result and
    boxed answer are off by a small nonzero amount (±1, ±2 or ±10), a near miss rather than
    nonsense. ``meta["answer"]`` holds the correct answer.
    """
    train, test = arith_problems(difficulty, n_train, n_test, seed)
    rng = random.Random(f"synthetic-prefs-{seed}")

    def to_pairs(problems: list, split: str) -> list[PreferencePair]:
        pairs = []
        for i, problem in enumerate(problems):
            wrong = problem.answer + rng.choice((-10, -2, -1, 1, 2, 10))
            if wrong < 0:
                wrong = problem.answer + 1
            pairs.append(PreferencePair(
                prompt=with_instruction(problem.question, instruction, sep=" "),
                chosen=problem.solution(),
                rejected=problem.solution(final=wrong),
                id=f"{split}-{i}",
                meta={"answer": str(problem.answer)},
            ))
        return pairs

    return DatasetSplits(train=to_pairs(train, "train"), test=to_pairs(test, "test"))
