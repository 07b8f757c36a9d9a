"""Small shaping rewards for ``reward=python`` or as ``reward=combined`` components (e.g. GDPO's
multi-reward normalisation): ``reward.fn=rltrain.rewards.shaping:brevity``."""
from __future__ import annotations

from typing import Sequence

from rltrain.types import RewardOutput, Sample

BREVITY_CHARS = 200


def brevity(samples: Sequence[Sample], completions: Sequence[str]) -> RewardOutput:
    """1 for an empty answer, falling linearly to 0 at ``BREVITY_CHARS`` characters (stripped)."""
    return RewardOutput(scores=[max(0.0, 1.0 - len(c.strip()) / BREVITY_CHARS) for c in completions], info={})
