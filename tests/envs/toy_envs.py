"""Environments for the tests: each exercises one part of the interface (rltrain/envs/base.py)."""
import os
import time

from rltrain.types import Sample


class Tools:
    """Tools that misbehave, for the bounds of a tool call."""

    def add(self, a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    def boom(self) -> str:
        """Raise."""
        raise RuntimeError("the tool broke")

    def hang(self) -> str:
        """Never return."""
        time.sleep(3600)
        return "never"

    def flood(self) -> str:
        """Print 10 MB, write 10 MB to file descriptor 1 and return 10 MB."""
        print("x" * 10_000_000)
        os.write(1, b"y" * 10_000_000)
        return "z" * 10_000_000


class Undocumented:
    def tool(self, x: int) -> int:
        return x


class Untyped:
    def tool(self, x):
        """Untyped argument."""
        return x


class Echo:
    """Answers every assistant turn with a fixed message, so that a random model plays several turns."""

    def reset(self, sample: Sample) -> str:
        return f"Say hi. {sample.question}"

    def step(self, text: str):
        return "ok, go on", False, {"tool_calls": 1}


class Shouty:
    """Answers with a long message (for the tool-output token cap)."""

    def step(self, text: str):
        return "LOUD " * 400, False, {}

    def reward(self, sample: Sample, completion: str) -> float:
        return 0.25
