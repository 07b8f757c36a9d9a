"""``reward=reasoning_gym``: a reasoning-gym task's own scorer (``score_answer``) on the answer between
the completion's last ``<answer>`` and ``</answer>`` (none: 0).

Many tasks give partial credit (0.01-0.1 for a parseable wrong answer, for example): the raw score is
logged as ``reasoning_gym/raw_score`` either way, and ``binarize=true`` makes the reward 1 for a score of
1 and 0 otherwise. ``correct`` is the raw score being 1.
"""
from __future__ import annotations

import re
from typing import Sequence

from rltrain.types import RewardOutput, Sample

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract(completion: str) -> str | None:
    """The text between the last ``<answer>`` and ``</answer>``, stripped; None when there is none."""
    found = _ANSWER_RE.findall(completion)
    return found[-1].strip() if found else None


class ReasoningGymReward:
    """Scores completions of ``data=reasoning_gym`` samples with their task's scorer.

    Args:
        binarize: reward 1 when the task's score is 1, else 0 (the raw score is logged either way).
    """

    logged_info = ("reasoning_gym/raw_score",)

    def __init__(self, binarize: bool = False):
        self.binarize = binarize

    def __call__(self, samples: Sequence[Sample], completions: Sequence[str]) -> RewardOutput:
        import reasoning_gym

        raw, extracted = [], []
        for s, c in zip(samples, completions):
            entry = s.meta.get("entry")
            if entry is None:
                raise ValueError(f"sample {s.id} has no reasoning-gym entry; reward=reasoning_gym needs "
                                 "data=reasoning_gym")
            answer = extract(c)
            extracted.append(answer)
            score = 0.0 if answer is None else float(
                reasoning_gym.get_score_answer_fn(entry["metadata"]["source_dataset"])(answer, entry))
            raw.append(score)
        scores = [float(r == 1.0) for r in raw] if self.binarize else raw
        return RewardOutput(scores, {"correct": [r == 1.0 for r in raw], "extracted": extracted,
                                     "reasoning_gym/raw_score": raw})
