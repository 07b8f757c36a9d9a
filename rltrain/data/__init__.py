"""Datasets: synthetic tasks, hub or local math sets, preference pairs, prompt rendering.

``DATASETS`` maps the ``data`` config option's ``name`` to a builder; the option's other
fields are exactly the builder's keyword arguments, and every builder returns
``DatasetSplits(train, test)``:

    arith            Sample          synthetic arithmetic, offline (default task)
    gsm8k            Sample          hub "openai/gsm8k" or local files
    math             Sample          hub MATH or local files
    apps             Sample          APPS-format code problems, tests in meta (reward=code)
    qa               Sample          any question/answer columns, free-form (reward=judge)
    preference       PreferencePair  local files or a hub id with prompt/chosen/rejected
    synthetic_prefs  PreferencePair  offline pairs from arith (correct vs. wrong solution)

``PREFERENCE_DATASETS`` names the builders that give pairs (DPO needs one of them).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from rltrain.data import apps, arith, competition_math, gsm8k, preference, qa, reasoning_gym
from rltrain.data.base import DEFAULT_INSTRUCTION, DataError, DatasetSplits
from rltrain.data.preference import PreferencePair
from rltrain.data.prompts import render_pair, render_prompt
from rltrain.data.sft import SFTPair, to_sft_pairs

DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "arith": arith.arith,
    "gsm8k": gsm8k.gsm8k,
    "math": competition_math.competition_math,
    "apps": apps.apps,
    "qa": qa.qa,
    "preference": preference.preference,
    "synthetic_prefs": preference.synthetic_prefs,
    "reasoning_gym": reasoning_gym.reasoning_gym,
}
PREFERENCE_DATASETS = frozenset({"preference", "synthetic_prefs"})


def build_dataset(name: str, **kwargs: Any) -> DatasetSplits:
    """Build the dataset registered under ``name`` with the config option's other fields.

    Raises:
        ValueError: unknown ``name`` or an option the builder does not take (the message
            lists the valid names / options).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data.name={name!r}; valid names: {', '.join(sorted(DATASETS))}")
    builder = DATASETS[name]
    options = inspect.signature(builder).parameters
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(
            f"data={name} has no option(s) {', '.join(unknown)}; its options: {', '.join(options)}"
        )
    return builder(**kwargs)


__all__ = [
    "DATASETS",
    "DEFAULT_INSTRUCTION",
    "PREFERENCE_DATASETS",
    "DataError",
    "DatasetSplits",
    "PreferencePair",
    "SFTPair",
    "build_dataset",
    "render_pair",
    "render_prompt",
    "to_sft_pairs",
]
