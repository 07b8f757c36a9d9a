"""The reward interface and the failure policy every loop applies to it.

A reward is any callable ``reward(samples, completions) -> RewardOutput`` (see
:class:`Reward`). Rewards that run user code, sandboxes, judges or sympy fail now and then;
one bad completion must not kill a multi-hour run, but a reward that fails on most of a batch
is a bug that must stop the run loudly. :func:`score_safely` implements exactly that policy.
A reward that cannot work at all (``RewardSetupError``, e.g. no sandbox for generated code)
stops the run at once.
"""
from __future__ import annotations

import math
from typing import Any, Protocol, Sequence

from rltrain.types import RewardOutput, Sample

_MAX_ERROR_CHARS = 300


class Reward(Protocol):
    """What every reward implements: score N completions in one batched call.

    Args:
        samples: N prompts; ``samples[i]`` produced ``completions[i]``.
        completions: N generated texts (response only, without the prompt).

    Returns:
        ``RewardOutput`` with N scores and per-completion ``info`` lists of length N.
    """

    def __call__(self, samples: Sequence[Sample], completions: Sequence[str]) -> RewardOutput: ...


class RewardFailureError(RuntimeError):
    """More completions failed to score than ``reward.max_fail_fraction`` allows."""


class RewardSetupError(ValueError):
    """A reward cannot run as configured (e.g. ``reward.isolation`` that this machine cannot
    provide). Raised before training where possible; never retried or scored around."""


def _short_error_text(text: str) -> str:
    text = str(text)
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


def _short_error(exc: BaseException) -> str:
    return _short_error_text(f"{type(exc).__name__}: {exc}")


def _check_output(output: Any, n: int) -> RewardOutput:
    """Raise if ``output`` is not a RewardOutput with ``n`` scores (a reward bug)."""
    if not isinstance(output, RewardOutput):
        raise TypeError(f"reward returned {type(output).__name__}, expected RewardOutput")
    if len(output.scores) != n:
        raise ValueError(f"reward returned {len(output.scores)} scores for {n} completions")
    for key, values in output.info.items():
        if len(values) != n:
            raise ValueError(f"reward info[{key!r}] has {len(values)} entries for {n} completions")
    return output


def score_safely(
    reward: Reward,
    samples: Sequence[Sample],
    completions: Sequence[str],
    *,
    max_fail_fraction: float,
) -> RewardOutput:
    """Score a batch; isolate failing completions; raise if too many fail.

    First the whole batch goes through ``reward`` in one call. If that raises (or returns a
    malformed output), every completion is scored again on its own, so one bad completion
    costs only itself. A reward may also report its own per-completion failures, without
    raising, as ``info["failed"]`` (bools) and ``info["error"]`` (messages): the code reward
    does, so one program's failure never re-runs the batch. A completion whose call raised,
    that the reward marked failed, or whose score is NaN or infinite, gets score 0.0,
    ``info["failed"][i] = True`` and ``info["error"][i]`` = a short message; the other info
    lists hold ``None`` at that index. ``RewardSetupError`` is re-raised at once.

    Args:
        reward: any :class:`Reward`.
        samples: N prompts, aligned with ``completions``.
        completions: N completion texts.
        max_fail_fraction: the largest tolerated fraction of failed completions, in [0, 1].

    Returns:
        ``RewardOutput`` with N finite scores; ``info`` always has ``"failed"`` and ``"error"``.

    Raises:
        RewardFailureError: failed / N > ``max_fail_fraction``; the message gives the count,
            the first error and the key ``reward.max_fail_fraction``.
    """
    n = len(completions)
    if len(samples) != n:
        raise ValueError(f"score_safely got {len(samples)} samples for {n} completions")
    if not 0.0 <= max_fail_fraction <= 1.0:
        raise ValueError(f"reward.max_fail_fraction must be in [0, 1], got {max_fail_fraction}")
    if n == 0:
        return RewardOutput(scores=[], info={"failed": [], "error": []})

    errors: list[str | None] = [None] * n
    try:
        batch = _check_output(reward(samples, completions), n)
        scores = [float(s) for s in batch.scores]
        info = {key: list(values) for key, values in batch.info.items()}
        own_failed, own_errors = info.pop("failed", [False] * n), info.pop("error", [None] * n)
        for i, failed in enumerate(own_failed):
            if failed:
                errors[i] = _short_error_text(own_errors[i] or "the reward marked this completion failed")
    except RewardSetupError:
        raise
    except Exception:  # noqa: BLE001 - any failure: retry one by one to isolate it
        scores, info = [0.0] * n, {}
        for i in range(n):
            try:
                single = _check_output(reward([samples[i]], [completions[i]]), 1)
                scores[i] = float(single.scores[0])
            except RewardSetupError:
                raise
            except Exception as exc:  # noqa: BLE001 - recorded in info["error"]
                errors[i] = _short_error(exc)
                continue
            own_failed, own_error = single.info.pop("failed", [False])[0], single.info.pop("error", [None])[0]
            if own_failed:
                errors[i] = _short_error_text(own_error or "the reward marked this completion failed")
            for key, values in single.info.items():
                info.setdefault(key, [None] * n)[i] = values[0]

    for i, score in enumerate(scores):
        if errors[i] is None and not math.isfinite(score):
            errors[i] = f"non-finite score {score}"
        if errors[i] is not None:
            scores[i] = 0.0
            for values in info.values():
                values[i] = None
    failed = [e is not None for e in errors]
    info["failed"] = failed
    info["error"] = errors

    n_failed = sum(failed)
    if n_failed > max_fail_fraction * n:
        first = next(e for e in errors if e is not None)
        raise RewardFailureError(
            f"{n_failed}/{n} completions failed to score ({n_failed / n:.0%} > "
            f"reward.max_fail_fraction={max_fail_fraction}); first error: {first}. "
            "Fix the reward, or tolerate more failures with reward.max_fail_fraction=<0..1>."
        )
    return RewardOutput(scores=scores, info=info)
