"""``reward=python reward.fn=package.module:function``: any Python callable as the reward.

The documented signature (batched, the default)::

    def my_reward(samples: list[Sample], completions: list[str], **fn_kwargs) -> list[float] | RewardOutput

or, with ``per_item=true``::

    def my_reward(sample: Sample, completion: str, **fn_kwargs) -> float

``samples[i]`` is the prompt that produced ``completions[i]`` (see ``rltrain.rewards``). The
function is imported when the reward is built, so a wrong path fails at start-up with a
message naming ``reward.fn``. Like uvicorn, gunicorn, celery and flask, the module is looked up in
the working directory first (``import_callable``): ``reward.fn=my_rewards:score`` finds a
``my_rewards.py`` where ``rltrain`` was started, in the launching process, in every local worker
(they inherit the working directory) and in every Slurm task, without PYTHONPATH.
Exceptions raised inside the function are not caught here: the
loops score through ``rltrain.rewards.base.score_safely``, which isolates the failing
completions (score 0, ``info["failed"]``) and stops the run when too many fail.
"""
from __future__ import annotations

import importlib
import math
import os
import sys
from typing import Any, Callable, Sequence

from rltrain.types import RewardOutput, Sample


def working_dir_on_path() -> str:
    """Put the working directory first on ``sys.path`` unless it is there already; return it.

    ``python -m`` and ``python script.py`` search the working directory (or the script's); a console
    script such as ``rltrain`` searches its own bin directory instead, so a user's ``my_rewards.py``
    next to the command was not found. CLIs that take ``module:attr`` (uvicorn, gunicorn, celery,
    flask) put the working directory first; so does this.
    """
    cwd = os.getcwd()
    if cwd not in {os.path.abspath(p or os.curdir) for p in sys.path}:
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()
    return cwd


def import_callable(path: str, *, option: str = "reward.fn") -> Callable:
    """Import ``package.module:attr`` (``attr`` may be dotted, e.g. ``Class.method``), looking in the
    working directory first (``working_dir_on_path``), then on the rest of ``sys.path``.

    Raises:
        ValueError: malformed path; ImportError: the module cannot be imported;
        AttributeError: no such attribute; TypeError: not callable. Each names ``option``.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{option} must look like 'package.module:function', got {path!r}")
    cwd = working_dir_on_path()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"{option}={path!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}); "
            f"it is looked up in the working directory {cwd} and on PYTHONPATH"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"{option}={path!r}: {getattr(obj, '__name__', obj)!s} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{option}={path!r} is a {type(obj).__name__}, not a callable")
    return obj


class PythonReward:
    """A reward computed by a user function.

    Args:
        fn: import path ``package.module:function``.
        per_item: call ``fn(sample, completion)`` once per completion instead of once per batch.
        fn_kwargs: extra keyword arguments passed to every call.
    """

    def __init__(self, fn: str, per_item: bool = False, fn_kwargs: dict[str, Any] | None = None):
        self.fn_path = fn
        self.fn = import_callable(fn)
        self.per_item = per_item
        self.fn_kwargs = dict(fn_kwargs or {})

    def __call__(self, samples: Sequence[Sample], completions: Sequence[str]) -> RewardOutput:
        n = len(completions)
        if len(samples) != n:
            raise ValueError(f"{len(samples)} samples for {n} completions")
        if self.per_item:
            result: Any = [self.fn(s, c, **self.fn_kwargs) for s, c in zip(samples, completions)]
        else:
            result = self.fn(list(samples), list(completions), **self.fn_kwargs)
        if isinstance(result, RewardOutput):
            output = result
        else:
            try:
                output = RewardOutput(scores=[float(x) for x in result])
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"reward.fn={self.fn_path!r} must return a list of floats or a RewardOutput, "
                    f"got {type(result).__name__}"
                ) from exc
        if len(output.scores) != n:
            raise ValueError(f"reward.fn={self.fn_path!r} returned {len(output.scores)} scores for {n} completions")
        bad = [s for s in output.scores if not math.isfinite(s)]
        if bad:
            raise ValueError(f"reward.fn={self.fn_path!r} returned non-finite scores {bad[:3]}")
        return output
