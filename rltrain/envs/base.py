"""The environment interface the multi-turn rollout drives, and its adapter for a plain class.

An environment is any class with a no-argument constructor (one instance per episode; the built-in
options take their own fields as keyword arguments, ``env=reasoning_gym``'s ``retries``, or what
``shared`` made). Every method is optional:

- ``reset(self, sample) -> str | list[dict]``: the first user message (or the whole message list)
  of the episode; default: ``sample.question``. All samples of a GRPO group are reset from the same
  ``Sample``.
- tools: every other public method, typed and documented. The model is shown each tool's
  signature and docstring; a call is parsed from its text (``rltrain.envs.tools``) and runs in a
  forked child with a time limit and a cap on its output.
- ``step(self, text) -> (message | None, done, info)``: replaces the built-in tool loop: given the
  assistant's text, the message to append (a string, sent as a user turn), whether the episode is
  over and a dict of numbers. Without it: the text's tool calls are run and their results sent back
  as one ``tool`` message; a text without a call ends the episode (it is the final answer).
- ``reward(self, sample, completion) -> float``: the episode's reward, from the final assistant
  text; without it the configured ``reward=`` scores the final text.
- ``shared(cls, **options) -> object with close()`` (a classmethod): what the episodes of one
  rollout share, made once per rollout and given to each episode's constructor as its one argument,
  closed when the rollout ends (``env=python_tool``: its sandbox). ``options`` are the env option's own
  fields (``env.isolation``...) and ``tool_timeout_s``, ``max_tool_output_chars``.
- ``fork_tools = False`` (a class attribute): the tools run in the trainer's process instead of a
  forked child; only for tools that bound their own time and output (``env=python_tool``'s runs the
  code in the sandbox, which does both).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from rltrain.envs.tools import bind, parse_tool_calls, run_tool, tool_methods, tool_schema
from rltrain.types import Sample

CALL_FORMAT = ('To call a tool write <tool_call>{"name": "<tool name>", "arguments": {<arguments as JSON>}}'
               '</tool_call>; its result comes back in the next message. When you know the final answer, '
               'write it without a tool call.')


@dataclass
class StepResult:
    """What one environment step gives the rollout.

    Attributes:
        message: the chat message to append (``{"role": ..., "content": ...}``), None when done.
        done: the episode is over.
        info: counts of this step (``tool_calls``, ``invalid_calls``, ``invalid_limit``).
    """

    message: dict | None
    done: bool
    info: dict[str, float] = field(default_factory=dict)


class ToolEnv:
    """One episode of a user's environment class: tool descriptions, the tool loop and its limits.

    Args:
        obj: the user's environment instance (see the module docstring).
        system_prompt: text put before the tool descriptions in the system message (or None).
        tool_timeout_s: a tool call running longer is stopped; the model is told.
        max_tool_output_chars: a tool's result (printed text + return value) is cut in the middle
            to this many characters before it is tokenised (the token cap is the rollout's).
        max_invalid_tool_calls: the episode ends when more malformed / unknown / failing-to-bind
            calls than this were made (small models loop on them).
    """

    def __init__(self, obj, *, system_prompt: str | None, tool_timeout_s: float, max_tool_output_chars: int,
                 max_invalid_tool_calls: int):
        self.obj = obj
        owner = type(obj).__name__
        self.tools = tool_methods(obj)
        self.schemas = [tool_schema(name, fn, owner=owner) for name, fn in sorted(self.tools.items())]
        self.system_prompt = system_prompt
        self.timeout_s, self.max_chars, self.max_invalid = tool_timeout_s, max_tool_output_chars, max_invalid_tool_calls
        self.fork_tools = bool(getattr(obj, "fork_tools", True))
        self.invalid = 0

    def reset(self, sample: Sample) -> list[dict]:
        """The episode's first messages: a system message with the tools, then the user's."""
        first = self.obj.reset(sample) if hasattr(self.obj, "reset") else sample.question
        messages = [{"role": "user", "content": first}] if isinstance(first, str) else list(first)
        parts = [self.system_prompt] if self.system_prompt else []
        if self.schemas:
            tools = "\n".join(json.dumps(s) for s in self.schemas)
            parts.append(f"You can use these tools:\n<tools>\n{tools}\n</tools>\n{CALL_FORMAT}")
        if parts and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + "\n\n".join(parts)}
        elif parts:
            messages.insert(0, {"role": "system", "content": "\n\n".join(parts)})
        return messages

    def step(self, text: str) -> StepResult:
        """The user's ``step`` if it has one, else the tool loop (see the module docstring)."""
        if hasattr(self.obj, "step"):
            message, done, info = self.obj.step(text)
            msg = None if message is None or done else {"role": "user", "content": str(message)}
            return StepResult(msg, bool(done) or msg is None, {k: float(v) for k, v in (info or {}).items()})
        calls = parse_tool_calls(text)
        if not calls:
            return StepResult(None, True, {})
        results, invalid = [], 0
        for call in calls:
            target = bind(call, self.tools)
            if isinstance(target, str):
                invalid += 1
                results.append(f"Error: {target}. {CALL_FORMAT}")
                continue
            if self.fork_tools:
                ok, out = run_tool(target[0], target[1], timeout_s=self.timeout_s, max_chars=self.max_chars)
            else:  # the tool bounds itself (fork_tools = False)
                ok, out = True, str(target[0](**target[1]))
            results.append(out if ok else f"Error: {out}")
        self.invalid += invalid
        info = {"tool_calls": float(len(calls)), "invalid_calls": float(invalid)}
        if self.invalid > self.max_invalid:
            info["invalid_limit"] = 1.0
            return StepResult(None, True, info)
        content = results[0] if len(results) == 1 else "\n".join(f"[{i + 1}] {r}" for i, r in enumerate(results))
        return StepResult({"role": "tool", "content": content}, False, info)

    def reward(self, sample: Sample, completion: str) -> float | None:
        """The user's episode reward, or None (the configured reward scores the final text)."""
        return float(self.obj.reward(sample, completion)) if hasattr(self.obj, "reward") else None
