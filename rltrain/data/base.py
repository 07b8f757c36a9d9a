"""Containers and helpers shared by the dataset builders."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")

# The instruction appended to every synthetic / math question; the reward reads \boxed{}.
DEFAULT_INSTRUCTION = "Give the final answer as \\boxed{N}."


class DataError(ValueError):
    """A dataset could not be loaded; the message names the file/row or the config key."""


@dataclass
class DatasetSplits(Generic[T]):
    """The train and test items of a dataset.

    Attributes:
        train: ``Sample``s for prompt datasets (RL, SFT), ``PreferencePair``s for preference
            datasets (DPO).
        test: held-out items of the same type (may be empty).
    """

    train: list[T]
    test: list[T]


@dataclass(frozen=True)
class Row:
    """One raw record and where it came from (for error messages)."""

    where: str  # e.g. "data/train.jsonl, line 12" or "openai/gsm8k [test], row 3"
    data: dict[str, Any]


def convert_rows(rows: list[Row], convert: Callable[[dict[str, Any]], T]) -> list[T]:
    """Apply ``convert`` to every row; its ValueError/KeyError/TypeError gets the row's location."""
    out = []
    for row in rows:
        try:
            out.append(convert(row.data))
        except (ValueError, KeyError, TypeError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise DataError(f"{row.where}: {message}") from exc
    return out


def field(row: dict[str, Any], key: str, *, option: str) -> str:
    """``row[key]`` as a non-empty string; ``option`` is the config key that names the column."""
    if key not in row:
        raise KeyError(
            f"missing field {key!r} (fields: {', '.join(map(str, row))}); "
            f"set data.{option}=<column> if the column has another name"
        )
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"field {key!r} must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise ValueError(f"field {key!r} is empty")
    return text


def split_by_fraction(items: list[T], test_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Hold out a seeded random subset of ``round(n * test_fraction)`` items as test.

    Both parts keep the source order, so the split is reproducible and easy to inspect.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"data.test_fraction must be in [0, 1), got {test_fraction}")
    n_test = round(len(items) * test_fraction)
    test_idx = set(random.Random(f"split-{seed}").sample(range(len(items)), n_test))
    train = [x for i, x in enumerate(items) if i not in test_idx]
    test = [x for i, x in enumerate(items) if i in test_idx]
    return train, test


def take(items: list[T], n: int | None, *, option: str) -> list[T]:
    """The first ``n`` items (all when ``n`` is None)."""
    if n is None:
        return items
    if n < 0:
        raise ValueError(f"data.{option} must be >= 0 or null, got {n}")
    return items[:n]


def samples_from_rows(
    train_rows: list[Row],
    test_rows: list[Row],
    convert: Callable[[dict[str, Any]], T],
    *,
    n_train: int | None,
    n_test: int | None,
) -> DatasetSplits[T]:
    """Convert both splits (every row is validated), keep the first ``n_train``/``n_test``
    and number the ids ``"train-<i>"`` / ``"test-<i>"``."""
    splits = {}
    for split, rows, n, option in (("train", train_rows, n_train, "n_train"),
                                   ("test", test_rows, n_test, "n_test")):
        items = take(convert_rows(rows, convert), n, option=option)
        for i, item in enumerate(items):
            item.id = f"{split}-{i}"
        splits[split] = items
    return DatasetSplits(train=splits["train"], test=splits["test"])


def with_instruction(question: str, instruction: str | None, sep: str = "\n\n") -> str:
    """Append the answer-format instruction (``None`` or ``""`` = none)."""
    return f"{question}{sep}{instruction}" if instruction else question
