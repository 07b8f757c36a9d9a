"""Environments (``env=``): multi-turn episodes with tools. ``env=single_turn`` (the default) is
one prompt → one response, the loops' own path; any other option makes the rollout multi-turn
(``rltrain.rollout.multiturn``).

``ENVS`` maps each option to its class as ``module:Class``; ``env=python`` takes the class from
``env.cls`` (looked up in the working directory first, like ``reward.fn``). Interface:
``rltrain.envs.base``.
"""
from __future__ import annotations

from rltrain.envs.base import StepResult, ToolEnv
from rltrain.envs.tools import ToolSpecError

ENVS: dict[str, str | None] = {
    "single_turn": None,
    "calculator": "rltrain.envs.calculator:Calculator",
    "python": None,  # env.cls
}


def env_class(name: str, cls: str | None = None):
    """The class of option ``name`` (``cls`` for ``env=python``); None for ``single_turn``.

    Raises:
        ValueError / ImportError / AttributeError / TypeError naming ``env.cls``.
    """
    from rltrain.rewards.python_fn import import_callable

    if name == "python":
        if not cls:
            raise ValueError("env=python needs env.cls=module:Class (a class in a file where rltrain is started)")
        target = import_callable(cls, option="env.cls")
        if not isinstance(target, type):
            raise TypeError(f"env.cls={cls!r} is a {type(target).__name__}, not a class")
        return target
    path = ENVS[name]
    return None if path is None else import_callable(path, option=f"env={name}")


def episode_factory(name: str, *, cls: str | None = None, system_prompt: str | None = None, tool_timeout_s: float,
                    max_tool_output_chars: int, max_invalid_tool_calls: int):
    """A function making one fresh ``ToolEnv`` per episode, or None for ``single_turn``. Building
    one episode here checks the class (no-argument constructor, every tool documented and typed)."""
    klass = env_class(name, cls)
    if klass is None:
        return None

    def make() -> ToolEnv:
        return ToolEnv(klass(), system_prompt=system_prompt, tool_timeout_s=tool_timeout_s,
                       max_tool_output_chars=max_tool_output_chars, max_invalid_tool_calls=max_invalid_tool_calls)

    make()
    return make


__all__ = ["ENVS", "StepResult", "ToolEnv", "ToolSpecError", "env_class", "episode_factory"]
