"""SFT pairs: (prompt, response) from any prompt dataset whose samples have worked solutions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rltrain.data.base import DataError
from rltrain.types import Sample


@dataclass
class SFTPair:
    """One supervised example: the question text and the target response."""

    prompt: str
    response: str


def to_sft_pairs(samples: Sequence[Sample]) -> list[SFTPair]:
    """``(sample.question, sample.solution)`` for every sample.

    Raises:
        DataError: a sample has no worked solution (names the first such sample).
    """
    missing = [s.id for s in samples if not s.solution]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(samples)} samples have no worked solution (first: "
            f"{missing[0]!r}); SFT needs a dataset with solutions (arith, gsm8k, math)"
        )
    return [SFTPair(prompt=s.question, response=s.solution) for s in samples]
