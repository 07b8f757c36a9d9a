"""``reward=combined``: a weighted sum of several reward sources (e.g. correctness + format).

Each component is ``{name, weight, kwargs, label?}``: ``name`` and ``kwargs`` build it through
the ``REWARDS`` registry exactly as ``reward=<name>`` would, ``weight`` multiplies its score
(default 1), and ``label`` (default: ``name``, suffixed ``_2``, ``_3`` … on repeats) names it in
the logs. The total is ``sum_k weight_k * score_k``; with ``normalize=then_sum`` (GDPO) the
training loop replaces it by ``sum_k weight_k * groupnorm(score_k)``, normalised over the batch
(``sum_normalize=batch``, the paper) or left to the advantage step (``sum_normalize=group``).

Logged per completion: ``info["reward/<label>"]`` = the component's unweighted score, and each
component's own info under ``"<label>/<key>"`` (keys already starting with ``<label>/`` are
kept as they are). ``info["correct"]`` and ``info["extracted"]`` (the answer maj@k votes on) are
those of the first component that reports one.

A component that raises is not hidden: the exception reaches ``score_safely``, which scores
the affected completions 0 as a whole and counts them against ``reward.max_fail_fraction``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from rltrain.types import RewardOutput, Sample

NORMALIZE = ("none", "then_sum")
SUM_NORMALIZE = ("batch", "group")  # GDPO's sum: normalised over the batch (paper) | by the advantage step


def _plain(value: Any) -> Any:
    """OmegaConf containers (from Hydra) as plain dicts/lists."""
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


class CombinedReward:
    """Weighted sum of reward components.

    Args:
        components: list of ``{"name": str, "weight": float = 1.0, "kwargs": dict = {},
            "label": str = name}``; instead of ``name`` + ``kwargs`` a component may carry an
            already-built reward callable under ``"reward"`` (then ``label`` is required).
        normalize: ``none`` (the score is the weighted sum) or ``then_sum`` (GDPO): the training
            loop normalises each component within its prompt's group before the weighted sum
            (``algos.grpo.gdpo_scores``); a reward alone does not know the groups, so the sum it
            returns is always the raw one (what evaluation uses).
        sum_normalize: with ``then_sum``, what normalises the weighted sum (read by the loops):
            ``batch`` (GDPO paper) or ``group`` (the usual advantage step; see the config field).
    """

    def __init__(self, components: Sequence[Mapping[str, Any]], normalize: str = "none",
                 sum_normalize: str = "batch"):
        from rltrain.rewards import build_reward  # here, not at import: the registry imports us

        if normalize not in NORMALIZE:
            raise ValueError(f"reward.normalize={normalize!r} is not valid; choose one of: {', '.join(NORMALIZE)}")
        self.normalize = normalize
        if sum_normalize not in SUM_NORMALIZE:
            raise ValueError(f"reward.sum_normalize={sum_normalize!r} is not valid; choose one of: "
                             f"{', '.join(SUM_NORMALIZE)}")
        self.sum_normalize = sum_normalize

        components = _plain(components)
        if not components:
            raise ValueError("reward=combined needs at least one entry in reward.components")
        self.components: list[tuple[str, float, Any]] = []
        seen: dict[str, int] = {}
        for i, spec in enumerate(components):
            spec = dict(_plain(spec))
            unknown = set(spec) - {"name", "weight", "kwargs", "label", "reward"}
            if unknown:
                raise ValueError(f"reward.components[{i}] has unknown key(s) {sorted(unknown)}; "
                                 "valid: name, weight, kwargs, label")
            if "reward" in spec:
                if "label" not in spec:
                    raise ValueError(f"reward.components[{i}]: a pre-built reward needs a label")
                reward = spec["reward"]
            elif "name" in spec:
                if spec["name"] == "combined":
                    raise ValueError(f"reward.components[{i}]: a combined reward cannot nest another")
                reward = build_reward(spec["name"], **dict(spec.get("kwargs") or {}))
            else:
                raise ValueError(f"reward.components[{i}] needs a 'name'")
            base = spec.get("label") or spec["name"]
            seen[base] = seen.get(base, 0) + 1
            label = base if seen[base] == 1 else f"{base}_{seen[base]}"
            self.components.append((label, float(spec.get("weight", 1.0)), reward))

    def __call__(self, samples: Sequence[Sample], completions: Sequence[str]) -> RewardOutput:
        n = len(completions)
        total = [0.0] * n
        info: dict[str, list[Any]] = {}
        for label, weight, reward in self.components:
            out = reward(samples, completions)
            if len(out.scores) != n:
                raise ValueError(f"reward component {label!r} returned {len(out.scores)} scores for {n} completions")
            total = [t + weight * float(s) for t, s in zip(total, out.scores)]
            info[f"reward/{label}"] = [float(s) for s in out.scores]
            for key, values in out.info.items():
                if key in ("failed", "error"):  # a component's own per-completion failures fail the total
                    merged = info.setdefault(key, [False if key == "failed" else None] * n)
                    info[key] = [m or v for m, v in zip(merged, values)]
                    continue
                if key in ("correct", "extracted") and key not in info:  # accuracy and maj@k: the first that reports one
                    info[key] = list(values)
                info[key if key.startswith(f"{label}/") else f"{label}/{key}"] = list(values)
        return RewardOutput(scores=total, info=info)

    def close(self) -> None:
        """Close the components that hold resources (sandboxes, worker pools)."""
        for _, _, reward in self.components:
            if hasattr(reward, "close"):
                reward.close()
