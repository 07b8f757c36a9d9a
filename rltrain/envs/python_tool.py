"""``env=python_tool``: the model runs Python it writes, in the code sandbox of ``reward=code``.

The one tool, ``run_python(code)``, sends the code to ``rltrain.rewards.sandbox`` as a one-test
program and returns what it printed. Isolation follows the rules of ``reward.isolation``
(docs/sandbox.md), here under ``env.isolation``: ``auto`` and ``namespace`` run every call in a
namespace jail or refuse to start (one line naming ``env.isolation``, before any model loads, never a
fallback); only an explicit ``process`` runs the code uncontained, and says so once on stderr.

The code runs inside a small wrapper program (``program``), itself in the jail: it executes the code
with ``sys.stdout`` and ``sys.stderr`` going to a buffer that keeps the first and last
``max_chars // 2`` characters (a 10 MB print costs ``max_chars``), prints the value of a final
expression (as a notebook cell would) and an exception's traceback (from the model's own frames),
and writes the kept text once at the end. The sandbox bounds the rest: ``env.tool_timeout_s`` of
wall-clock and CPU time (then the call is killed and the model told), ``env.memory_mb`` of address
space, and output written around the wrapper (``os.write(1, ...)``) by the file-size limit and the
output cap, past which the call is an error message. The text is cut to ``max_chars`` again on this
side (middle cut, said); the multi-turn rollout then caps it at ``env.max_tool_output_tokens``.

Each call is a fresh process in a fresh jail: nothing survives between calls (the tool says so).
The episodes of one rollout share one ``CodeRunner`` (one sandbox), made by ``PythonTool.shared``
and closed when the rollout ends. A failure of the sandbox itself (not of the model's code: the jail
could not be built for this call) raises ``SandboxError``: the trainer's problem, not a message the
model should learn from.
"""
from __future__ import annotations

import math
import sys

from rltrain.envs.tools import cut_middle
from rltrain.rewards.code import ISOLATIONS
from rltrain.rewards.sandbox import STATUS_OK, STATUS_TIMEOUT, Limits, NamespaceUnavailable, Sandbox
from rltrain.types import Sample

_WRAPPER = '''\
import ast, io, linecache, os, sys, traceback


class _Kept(io.TextIOBase):
    """Keeps the first and last cap // 2 characters written."""

    def __init__(self, cap):
        self.half, self.cap, self.head, self.tail, self.total = cap // 2, cap, "", "", 0

    def writable(self):
        return True

    def write(self, s):
        s = str(s)
        self.total += len(s)
        if len(self.head) < self.half:
            self.head += s[: self.half - len(self.head)]
        self.tail = (self.tail + s[-(self.cap - self.half):])[-(self.cap - self.half):]
        return len(s)

    def text(self):
        if self.total <= self.cap:
            return self.head + self.tail[len(self.tail) - (self.total - len(self.head)):]
        return f"{self.head}\\n[... {self.total - self.cap} characters cut from the middle ...]\\n{self.tail}"


def _main(source, cap):
    out = _Kept(cap)
    sys.stdout = sys.stderr = out
    linecache.cache["<code>"] = (len(source), None, source.splitlines(True), "<code>")
    scope = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        tree = ast.parse(source, "<code>")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<code>", "exec"), scope)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<code>", "eval"), scope)
            if value is not None:
                print(repr(value))
    except SystemExit as exc:
        if exc.code not in (None, 0):
            print(f"SystemExit: {exc.code}")
    except BaseException as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != "<code>":
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb)
    data = out.text().encode("utf-8", "replace")
    try:
        while data:
            data = data[os.write(1, data):]
    except OSError as exc:  # the code wrote past the file-size limit around sys.stdout (os.write(1, ...))
        os.write(2, f"more output than the limit was written to file descriptor 1 ({exc.strerror})".encode())
        os._exit(1)


_main(SOURCE, CAP)
'''


def program(code: str, max_chars: int) -> str:
    """The program the sandbox runs for one call: the wrapper (see the module docstring) around ``code``."""
    return f"SOURCE = {code!r}\nCAP = {int(max_chars)}\n" + _WRAPPER


_NOTE_CHARS = 100  # room for the wrapper's "[... N characters cut from the middle ...]"


class EnvSetupError(ValueError):
    """An environment that cannot run as configured here (``env.isolation`` this machine cannot provide)."""


_PROCESS_WARNING_SHOWN = False


def _warn_process_once() -> None:
    global _PROCESS_WARNING_SHOWN
    if not _PROCESS_WARNING_SHOWN:
        _PROCESS_WARNING_SHOWN = True
        print("rltrain: env.isolation=process: the model's code is NOT contained: it runs on this host as the "
              "trainer's user with rlimits and a seccomp filter only, and can read and write what that user can "
              "(docs/sandbox.md). Use env.isolation=auto (namespace jail) for untrusted code.", file=sys.stderr,
              flush=True)


class CodeRunner:
    """Runs one tool call's code in the sandbox, bounded (see the module docstring).

    Args:
        isolation: ``auto`` | ``namespace`` | ``process``, as ``reward.isolation``.
        timeout_s: wall-clock (and CPU) seconds of one call.
        max_chars: characters of output sent back (head and tail, the middle cut and said).
        memory_mb: address space of each process of the call (RLIMIT_AS).

    Raises:
        EnvSetupError: ``auto`` / ``namespace`` where no namespace jail can be built (one line
            naming ``env.isolation``); never a fallback to ``process``.
    """

    def __init__(self, *, isolation: str, timeout_s: float, max_chars: int, memory_mb: int):
        if isolation not in ISOLATIONS:
            raise EnvSetupError(f"env.isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
        self.timeout_s, self.max_chars = timeout_s, max_chars
        # The wrapper writes at most max_chars characters (4 bytes each at worst) plus a note.
        out_mb = max(1, math.ceil((4 * max_chars + 1024) / 2**20))
        limits = Limits(timeout=timeout_s, program_timeout=timeout_s + 10.0, memory_mb=memory_mb, file_mb=out_mb,
                        output_mb=out_mb)
        if isolation == "process":
            _warn_process_once()
        try:
            self.sandbox = Sandbox(limits, isolation=isolation, num_workers=1)
        except NamespaceUnavailable as exc:
            raise EnvSetupError(
                f"env.isolation={isolation}: the namespace jail for the model's code cannot be built here "
                f"({exc.reason}); fix: run the trainer as root, or set env.isolation=process explicitly to run "
                "the code uncontained") from None

    def run(self, code: str) -> str:
        """What the model is told: the call's output, or ``Error: ...`` (timeout, killed, too much output)."""
        run = self.sandbox.run(program(code, self.max_chars), [""])
        if run.compile_error is not None:  # the wrapper compiles the code itself; this would be a wrapper bug
            return f"Error: {run.compile_error}"
        test = run.tests[0]
        if test.status == STATUS_OK:
            # the wrapper's text is max_chars plus its note; more came around it (os.write(1, ...)): cut here
            text = cut_middle(test.text or "", self.max_chars + _NOTE_CHARS)
            return text if text.strip() else "(the code printed nothing)"
        if test.status == STATUS_TIMEOUT:
            return f"Error: the code ran longer than {self.timeout_s:g} s and was stopped"
        return f"Error: the code was stopped ({test.error})"

    def close(self) -> None:
        self.sandbox.close()


class PythonTool:
    """Answer the question; the ``run_python`` tool runs code the model writes, in the code sandbox."""

    fork_tools = False  # the sandbox bounds each call's time and output; the call runs in the trainer's process

    def __init__(self, runner: CodeRunner):
        self._runner = runner

    @classmethod
    def shared(cls, *, isolation: str, memory_mb: int, tool_timeout_s: float, max_tool_output_chars: int) -> CodeRunner:
        """The sandbox the episodes of one rollout share (``rltrain.envs.EnvFactory`` closes it)."""
        return CodeRunner(isolation=isolation, timeout_s=tool_timeout_s, max_chars=max_tool_output_chars,
                          memory_mb=memory_mb)

    def reset(self, sample: Sample) -> str:
        return f"{sample.question} You can run Python code with the run_python tool."

    def run_python(self, code: str) -> str:
        """Run a Python 3 program and return what it prints (an error's traceback too; the value of a last
        expression is printed). Every call starts a fresh process without network or files from earlier
        calls: define everything the code uses in the same call."""
        return self._runner.run(code)
