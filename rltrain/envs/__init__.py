"""Environments (``env=``): multi-turn episodes with tools. ``env=single_turn`` (the default) is
one prompt → one response, the loops' own path; any other option makes the rollout multi-turn
(``rltrain.rollout.multiturn``).

``ENVS`` maps each option to its class as ``module:Class``; ``env=python`` takes the class from
``env.cls`` (looked up in the working directory first, like ``reward.fn``). Interface:
``rltrain.envs.base``; ``EnvFactory`` makes a rollout's episodes.
"""
from __future__ import annotations

from rltrain.envs.base import StepResult, ToolEnv
from rltrain.envs.tools import ToolSpecError

ENVS: dict[str, str | None] = {
    "single_turn": None,
    "calculator": "rltrain.envs.calculator:Calculator",
    "python": None,  # env.cls
    "python_tool": "rltrain.envs.python_tool:PythonTool",
    "reasoning_gym": "rltrain.envs.reasoning_gym:ReasoningGym",
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


class EnvFactory:
    """Makes one fresh ``ToolEnv`` per call, and holds what the episodes of one rollout share until
    ``close()`` (a class's ``shared``: ``env=python_tool``'s sandbox).

    Args:
        klass: the environment class.
        options: the env option's own fields (``env=reasoning_gym``: ``retries``): the constructor's keyword
            arguments, or, for a class with ``shared``, that classmethod's (with the tool bounds).
        system_prompt, tool_timeout_s, max_tool_output_chars, max_invalid_tool_calls: as ``ToolEnv``.

    Building the factory builds one episode, which checks the class (no-argument constructor, every
    tool documented and typed) and, through ``shared``, what it needs (python_tool: the sandbox's
    isolation).
    """

    def __init__(self, klass: type, options: dict, *, system_prompt: str | None, tool_timeout_s: float,
                 max_tool_output_chars: int, max_invalid_tool_calls: int):
        self.klass, self.options = klass, options
        self.bounds = dict(system_prompt=system_prompt, tool_timeout_s=tool_timeout_s,
                           max_tool_output_chars=max_tool_output_chars, max_invalid_tool_calls=max_invalid_tool_calls)
        self.shared = None
        if hasattr(klass, "shared"):
            self.shared = klass.shared(**options, tool_timeout_s=tool_timeout_s,
                                       max_tool_output_chars=max_tool_output_chars)
        try:
            self()
        except BaseException:
            self.close()
            raise

    def __call__(self) -> ToolEnv:
        obj = self.klass(self.shared) if self.shared is not None else self.klass(**self.options)
        return ToolEnv(obj, **self.bounds)

    def close(self) -> None:
        if self.shared is not None:
            self.shared.close()
            self.shared = None


def episode_factory(name: str, *, system_prompt: str | None = None, tool_timeout_s: float,
                    max_tool_output_chars: int, max_invalid_tool_calls: int, **options) -> EnvFactory | None:
    """The ``EnvFactory`` of option ``name``, or None for ``single_turn``. ``options``: the option's own
    fields (``cls`` for ``env=python``, ``isolation`` and ``memory_mb`` for ``env=python_tool``...)."""
    klass = env_class(name, options.pop("cls", None))
    if klass is None:
        return None
    return EnvFactory(klass, options, system_prompt=system_prompt, tool_timeout_s=tool_timeout_s,
                      max_tool_output_chars=max_tool_output_chars, max_invalid_tool_calls=max_invalid_tool_calls)


__all__ = ["ENVS", "EnvFactory", "StepResult", "ToolEnv", "ToolSpecError", "env_class", "episode_factory"]
