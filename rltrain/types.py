"""Typed containers that cross module boundaries (data → rollout → rewards → loops)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    """One prompt of a dataset.

    Attributes:
        id: stable identifier (``"<split>-<index>"`` or the source row id).
        question: the problem text shown to the model (before any chat template).
        answer: the reference answer as a string (e.g. ``"85"`` or ``"\\frac{1}{2}"``);
            empty when the task has no single reference (code tasks use ``meta``).
        solution: an optional worked solution (used by SFT).
        meta: task-specific extras (e.g. APPS ``input_output``), never read by generic code.
    """

    id: str
    question: str
    answer: str = ""
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardOutput:
    """What every reward returns for a batch of N completions.

    Attributes:
        scores: N floats, the reward of each completion.
        info: per-completion extras, each a list of length N (e.g. ``"correct"``,
            ``"failed"`` = the reward call raised and the score was set to 0,
            ``"error"`` = the error text or ``None``).
    """

    scores: list[float]
    info: dict[str, list[Any]] = field(default_factory=dict)
