"""``env=reasoning_gym``: reasoning-gym tasks as episodes.

The episode starts from a ``data=reasoning_gym`` item's question (with its answer instruction: the
final answer between ``<answer>`` and ``</answer>``); the configured reward scores the last assistant
turn, which ``env=reasoning_gym`` makes ``reward=reasoning_gym`` (the task's own ``score_answer``,
``reward.binarize`` as with the data alone: the option selects ``data=reasoning_gym``, which selects
that reward). With ``env.retries`` > 0 an answer without the tags is not the end: the model is told its
answer could not be read and how to write it, and gets another turn, up to ``retries`` times (each
one of ``env.max_turns``). An answer with the tags ends the episode, right or wrong: the model is never
told whether it was right, so a retry cannot be used to guess.
"""
from __future__ import annotations

from rltrain.rewards.reasoning_gym import extract
from rltrain.types import Sample

RETRY = ("Your answer could not be read: no final answer between <answer> and </answer> was found. "
         "Write the final answer alone between <answer> and </answer>.")


class ReasoningGym:
    """A reasoning-gym item's question, answered in ``<answer>`` tags (see the module docstring).

    Args:
        retries: turns in which an answer without the tags is sent back as not read.
    """

    def __init__(self, retries: int = 1):
        self.retries = retries
        self.left = retries

    def reset(self, sample: Sample) -> str:
        if "entry" not in sample.meta:
            raise ValueError(f"env=reasoning_gym needs data=reasoning_gym items; sample {sample.id} has no "
                             "reasoning-gym entry")
        self.left = self.retries
        return sample.question

    def step(self, text: str):
        if extract(text) is not None or self.left == 0:
            return None, True, {}
        self.left -= 1
        return RETRY, False, {}
