"""Rewards: verifiers and reward models behind one batched interface.

Every reward is a callable ``reward(samples, completions) -> RewardOutput``: ``samples[i]`` is
the prompt that produced ``completions[i]`` (so a group of G completions repeats its sample G
times), and ``RewardOutput.scores`` holds one float per completion. Loops call rewards through
:func:`rltrain.rewards.base.score_safely`, which turns per-completion failures into score 0
plus ``info["failed"]`` instead of crashing a long run.

``REWARDS`` maps the ``reward`` config option's ``name`` to a lazy import path
(``"module:Class"``), so importing this package does not import every reward's dependencies
(judge and classifier rewards pull in models). The option's other fields are exactly the
class's keyword arguments.
"""
from __future__ import annotations

import importlib
from typing import Any

from rltrain.rewards.base import Reward, RewardFailureError, score_safely

REWARDS: dict[str, str] = {
    "math": "rltrain.rewards.math:MathReward",
    "code": "rltrain.rewards.code:CodeReward",
    "judge": "rltrain.rewards.judge:JudgeReward",
    "classifier": "rltrain.rewards.classifier:ClassifierReward",
    "python": "rltrain.rewards.python_fn:PythonReward",
    "combined": "rltrain.rewards.combined:CombinedReward",
    "reasoning_gym": "rltrain.rewards.reasoning_gym:ReasoningGymReward",
}


def reward_class(name: str) -> type:
    """Import and return the class registered under ``name``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names).
    """
    if name not in REWARDS:
        raise ValueError(
            f"unknown reward.name={name!r}; valid names: {', '.join(sorted(REWARDS))}"
        )
    module_name, _, attr = REWARDS[name].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


def build_reward(name: str, **kwargs: Any) -> Reward:
    """Construct the reward registered under ``name`` with the config option's other fields.

    Example:
        >>> build_reward("math", format_score=0.1)  # doctest: +SKIP
    """
    return reward_class(name)(**kwargs)


__all__ = [
    "REWARDS",
    "Reward",
    "RewardFailureError",
    "build_reward",
    "reward_class",
    "score_safely",
]
