"""``reward=code``: run the completion's program on the problem's tests, in a sandbox.

APPS format (docs/algorithms.md §8; hendrycks/apps ``eval/testing_util.py``): ``sample.meta
["input_output"]`` holds ``inputs``, ``outputs`` and an optional ``fn_name``.

- stdin/stdout problems: each input is fed on stdin and stdout is compared with the expected
  output, ignoring whitespace (token by token, split on ASCII whitespace, compared as bytes:
  the output is never decoded), with integers compared exactly and other
  numbers within ``float_tol`` (absolute, or relative for magnitudes above 1).
- call-based problems (``fn_name``): the module's function, or ``Solution().<fn_name>``, is
  called with each input's argument list; the return value (tuples become lists) must equal
  the expected output, or its only element when the expected output is a one-element list
  (the APPS convention), with the same number tolerance.

The program is the completion's last fenced code block, a ```python one when there is any
(an unclosed last fence counts: generation may stop before closing it). No block at all is a
compile error, as is a syntax error.

Per-test outcomes: ``pass``, ``wrong_answer``, ``runtime_error``, ``timeout``, ``skipped`` (not
run because an earlier error already fixed the score), and ``compile_error`` for every test of
a program that does not compile. Reward modes:

- ``all_pass`` (default): 1 if every test passes, else 0 (APPS strict accuracy).
- ``pass_rate``: the fraction of tests passed (APPS test-case average).
- ``shaped`` (CodeRL): −1 compile error, −0.6 runtime error or timeout, −0.3 some test wrong,
  +1 all pass. Precedence as CodeRL's ``get_error_type``: compile > runtime > wrong.

Every byte of program output is hostile input (docs/sandbox.md, "Judging"; the comparison is
``code_compare``): integers compare
as digit strings (no ``int()`` conversion limit; a 10**6-digit number is just a wrong answer),
floats only in plain decimal syntax, and every parse scans once (no backtracking regex: a
16 MiB token costs ~0.1 s); tokens are streamed against the expected ones (no list of a
flood's tokens); the JSON of a return value is decoded only when it is not far longer than
the expected value's, with big integers kept as text and its depth bounded by the expected
value's; the sandbox reads back at most ``output_mb`` per program over all its tests
(``code/output_truncated``, ``code/output_bytes`` in the info); each run is judged in its
worker as soon as it ends and then released; judging one program takes at most
``judge_timeout`` seconds, past which it scores as wrong on every test (``code/judge_timeout``).
A program whose scoring raises anyway, or whose sandbox run fails before the program started,
scores 0 and is marked ``info["failed"]`` (counted against ``reward.max_fail_fraction`` by
``score_safely``); the rest of the batch is not re-run. Once the program started, whatever
breaks is the program's: a test its harness never reported is a runtime error.

Isolation (``reward.isolation``) fails closed: ``auto`` and ``namespace`` run every program
in a namespace jail or refuse to start (:func:`preflight`, ``RewardSetupError``); only an
explicit ``process`` runs programs uncontained, and says so once on stderr. ``process`` is not
a containment boundary (seccomp and rlimits only): the program runs on the host as the trainer's
user, and where that user is root, as root with all its capabilities. A run never changes its
isolation after the start.

Departures from the references: tests run one process each (a fork of a per-program harness,
inside one jail per program: see the ``rewards.sandbox`` package), so one test's global state
cannot leak into the next; all_pass and shaped stop a program at its first runtime error or
timeout (the score is already decided), pass_rate runs every test; verl's "first 10 tests" cut
is ``max_tests``.
Expected outputs never enter the sandbox.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any, Sequence

from rltrain.rewards.base import RewardSetupError
from rltrain.rewards.code_compare import JudgeTimeout, call_result_matches, stdout_matches
from rltrain.rewards.sandbox import (
    STATUS_OK,
    STATUS_SKIPPED,
    STATUS_TIMEOUT,
    Job,
    Limits,
    NamespaceUnavailable,
    ProgramRun,
    Sandbox,
)
from rltrain.types import RewardOutput, Sample

MODES = ("all_pass", "pass_rate", "shaped")
SHAPED_SCORES = {"compile_error": -1.0, "runtime_error": -0.6, "timeout": -0.6, "wrong_answer": -0.3, "pass": 1.0}

PASS, WRONG, RUNTIME, TIMEOUT, COMPILE, SKIPPED = (
    "pass", "wrong_answer", "runtime_error", "timeout", "compile_error", "skipped",
)

_FENCE_TAG_RE = re.compile(r"[ \t]*([\w+#.-]*)")  # anchored at the fence, no backtracking
_PYTHON_TAGS = {"python", "py", "python3", "py3"}
ISOLATIONS = ("auto", "namespace", "process")
_PROCESS_WARNING_SHOWN = False


def _process_warning() -> str:
    user = f"uid {os.geteuid()}" + (" (root, with all its capabilities)" if os.geteuid() == 0 else "")
    return (
        f"rltrain: reward.isolation=process: generated programs are NOT contained. Each runs on this host "
        f"as {user} with only rlimits, a seccomp filter and a Python-level guard it can undo: it can read "
        "and write every file this user can (the project, site-packages, /tmp, /dev/shm, the home "
        "directory), read the trainer's environment and memory through /proc, signal and ptrace this "
        "user's processes, use the network, and leave processes behind. Use reward.isolation=auto "
        "(namespace jail) for untrusted code."
    )


def _warn_process_once() -> None:
    global _PROCESS_WARNING_SHOWN
    if not _PROCESS_WARNING_SHOWN:
        _PROCESS_WARNING_SHOWN = True
        print(_process_warning(), file=sys.stderr, flush=True)


def _setup_error(isolation: str, reason: str) -> RewardSetupError:
    return RewardSetupError(
        f"reward.isolation={isolation}: the namespace jail for generated code cannot be built here ({reason}); "
        "fix: run the trainer as root (the jail needs root for its namespaces, mounts and uid switch; "
        "writable pids/memory cgroups add fork and memory limits), or set reward.isolation=process "
        "explicitly to run the programs uncontained"
    )


def preflight(isolation: str) -> str:
    """Decide the isolation of ``reward=code`` before any model loads; returns what to use.

    ``auto`` and ``namespace``: build one jail and run a probe program in it; ``"namespace"``
    when that works, else ``RewardSetupError`` (one line: the key, the reason, the fix).
    ``process``: print once to stderr that programs are not contained and what they can
    reach, and return ``"process"``.
    """
    if isolation not in ISOLATIONS:
        raise RewardSetupError(f"reward.isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
    if isolation == "process":
        _warn_process_once()
        return "process"
    try:
        Sandbox(Limits(), isolation="namespace", num_workers=1, use_cgroups=False).close()
    except NamespaceUnavailable as exc:
        raise _setup_error(isolation, exc.reason) from None
    return "namespace"


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(tag, body)`` of each fenced block, in one left-to-right pass (linear in ``text``).

    A fence is three backticks; its tag is the word right after them (``[\\w+#.-]*`` after
    blanks), the rest of that line is ignored, and the body runs to the next three backticks
    or, for an unclosed last block, to the end. A fence with no newline after it opens nothing.
    """
    blocks, pos = [], 0
    while True:
        start = text.find("```", pos)
        if start < 0:
            return blocks
        newline = text.find("\n", start + 3)
        if newline < 0:
            return blocks
        tag = _FENCE_TAG_RE.match(text, start + 3, newline).group(1)
        end = text.find("```", newline + 1)
        blocks.append((tag.lower(), text[newline + 1:end if end >= 0 else len(text)]))
        if end < 0:
            return blocks
        pos = end + 3


def extract_code(completion: str) -> str | None:
    """The last ```python fenced block of ``completion``, else its last fenced block, else None."""
    blocks = _fenced_blocks(completion)
    if not blocks:
        return None
    python = [code for tag, code in blocks if tag in _PYTHON_TAGS]
    return python[-1] if python else blocks[-1][1]


def parse_tests(meta: dict[str, Any]) -> tuple[list, list, str | None]:
    """``(inputs, outputs, fn_name)`` from ``meta["input_output"]`` (a dict or its JSON text).

    Raises:
        ValueError: missing or malformed tests (a data problem, not a completion's fault).
    """
    spec = meta.get("input_output")
    if spec is None:
        raise ValueError("sample.meta has no 'input_output' (APPS tests) for reward=code")
    if isinstance(spec, str):
        spec = json.loads(spec)
    inputs, outputs = spec.get("inputs"), spec.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or not inputs:
        raise ValueError("input_output needs non-empty lists 'inputs' and 'outputs'")
    if len(inputs) != len(outputs):
        raise ValueError(f"input_output has {len(inputs)} inputs but {len(outputs)} outputs")
    fn_name = spec.get("fn_name") or None
    return inputs, outputs, fn_name


def judge_run(run: ProgramRun, outputs: list, fn_name: str | None, float_tol: float,
              deadline: float | None = None) -> list[str]:
    """Per-test outcome codes of a program run against the expected ``outputs``; past
    ``deadline`` (``time.monotonic``) ``JudgeTimeout`` is raised."""
    if run.compile_error is not None:
        return [COMPILE] * len(outputs)
    outcomes = []
    for test, expected in zip(run.tests, outputs):
        if deadline is not None and time.monotonic() > deadline:
            raise JudgeTimeout
        if test.status == STATUS_OK:
            if fn_name:
                ok = call_result_matches(test.output or b"", expected, float_tol)
            else:
                ok = stdout_matches(test.output or b"", expected, float_tol, deadline)
            outcomes.append(PASS if ok else WRONG)
        elif test.status == STATUS_TIMEOUT:
            outcomes.append(TIMEOUT)
        elif test.status == STATUS_SKIPPED:
            outcomes.append(SKIPPED)
        else:
            outcomes.append(RUNTIME)
    return outcomes


def program_status(outcomes: list[str]) -> str:
    """One status per program, CodeRL precedence: compile > runtime/timeout (first) > wrong > pass."""
    if COMPILE in outcomes:
        return COMPILE
    for outcome in outcomes:
        if outcome in (RUNTIME, TIMEOUT):
            return outcome
    return WRONG if any(o != PASS for o in outcomes) else PASS


def score(outcomes: list[str], mode: str) -> float:
    """The reward of one program's outcomes under ``mode`` (see the module docstring)."""
    if mode == "all_pass":
        return float(all(o == PASS for o in outcomes))
    if mode == "pass_rate":
        return sum(o == PASS for o in outcomes) / len(outcomes)
    return SHAPED_SCORES[program_status(outcomes)]


class CodeReward:
    """Execution reward for APPS-format problems.

    Args:
        mode: ``all_pass`` | ``pass_rate`` | ``shaped``.
        timeout: wall-clock seconds per test (CPU seconds too, rounded up).
        program_timeout: wall-clock seconds for all tests of one program.
        memory_mb: address-space limit of each process of the program.
        file_mb: largest file or stdout one test may write, and the most output (stdout or
            return values) read back from one program over all its tests; beyond it the test is
            a runtime error and ``code/output_truncated`` is set.
        max_processes: processes/threads one program may run at once (harness included).
        max_tests: run only the first ``max_tests`` tests of each problem (None = all).
        float_tol: tolerance of numeric comparisons.
        num_workers: programs run in parallel (None = CPU count).
        isolation: ``auto`` | ``namespace`` (a namespace jail, or ``RewardSetupError`` at the
            first call where none can be built) | ``process`` (uncontained, says so once on
            stderr). See :func:`preflight`.
        judge_timeout: seconds the trainer may spend comparing one program's outputs with the
            expected ones; past it the program scores 0 and ``code/judge_timeout`` is set.
            Comparison is linear in the output, so only a huge expected output comes near it.

    Memory: each program's run is judged in its worker as soon as it ends and then released,
    so the trainer holds at most ``2 * file_mb`` MiB of program output per worker (the stream
    read back and the outputs cut from it), whatever the batch size.
    """

    logged_info = ("code/output_truncated", "code/judge_timeout")  # per-completion info a step logs the mean of


    def __init__(
        self,
        mode: str = "all_pass",
        timeout: float = 4.0,
        program_timeout: float = 30.0,
        memory_mb: int = 1024,
        file_mb: int = 16,
        max_processes: int = 16,
        max_tests: int | None = None,
        float_tol: float = 1e-6,
        num_workers: int | None = None,
        isolation: str = "auto",
        judge_timeout: float = 5.0,
    ):
        if mode not in MODES:
            raise ValueError(f"reward.mode must be one of {', '.join(MODES)}, got {mode!r}")
        if max_tests is not None and max_tests < 1:
            raise ValueError(f"reward.max_tests must be >= 1 or null, got {max_tests}")
        if float_tol < 0:
            raise ValueError(f"reward.float_tol must be >= 0, got {float_tol}")
        if isolation not in ISOLATIONS:
            raise ValueError(f"reward.isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
        if not judge_timeout > 0:
            raise ValueError(f"reward.judge_timeout must be > 0, got {judge_timeout}")
        self.judge_timeout = judge_timeout
        self.mode = mode
        self.max_tests = max_tests
        self.float_tol = float_tol
        self.limits = Limits(
            timeout=timeout, program_timeout=program_timeout, memory_mb=memory_mb,
            file_mb=file_mb, max_processes=max_processes, output_mb=file_mb,
        )
        self.num_workers = num_workers
        self.isolation = isolation
        self._sandbox: Sandbox | None = None

    @property
    def sandbox(self) -> Sandbox:
        """The sandbox, started on first use (construction stays cheap and side-effect free).

        Its isolation is fixed here for the life of the reward: a jail that later fails makes
        the affected programs fail, it never switches the run to ``process``.
        """
        if self._sandbox is None:
            if self.isolation == "process":
                _warn_process_once()
            try:
                self._sandbox = Sandbox(self.limits, isolation=self.isolation, num_workers=self.num_workers)
            except NamespaceUnavailable as exc:
                raise _setup_error(self.isolation, exc.reason) from None
        return self._sandbox

    def _judge(self, run: ProgramRun, outputs: list, fn_name: str | None) -> dict:
        """One program's verdict (in a worker thread, right after its run): what ``__call__``
        reports of it, without its outputs. Never raises: a scoring failure is in ``failure``."""
        verdict = {"output_bytes": run.output_bytes, "truncated": run.truncated, "judge_timeout": False,
                   "failure": None}
        try:
            deadline = time.monotonic() + self.judge_timeout
            try:
                verdict["outcomes"] = judge_run(run, outputs, fn_name, self.float_tol, deadline)
            except JudgeTimeout:  # the program's output is to blame: a 0, counted, not a failure
                verdict["outcomes"] = [WRONG] * len(outputs)
                verdict["judge_timeout"] = True
            verdict["error"] = run.compile_error or next(
                (t.error for t in run.tests if t.error and t.status != STATUS_SKIPPED), None
            )
            if verdict["judge_timeout"]:
                verdict["error"] = f"judging took over {self.judge_timeout:g} s (reward.judge_timeout)"
        except Exception as exc:  # noqa: BLE001 - this program scores 0 and is counted as failed
            verdict["failure"] = f"{type(exc).__name__}: {exc}"[:300]
        return verdict

    def __call__(self, samples: Sequence[Sample], completions: Sequence[str]) -> RewardOutput:
        if len(samples) != len(completions):
            raise ValueError(f"{len(samples)} samples for {len(completions)} completions")
        tests = [parse_tests(s.meta) for s in samples]
        if self.max_tests is not None:
            tests = [(i[: self.max_tests], o[: self.max_tests], f) for i, o, f in tests]
        codes = [extract_code(c) for c in completions]
        stop_on_error = self.mode != "pass_rate"
        sandbox = self.sandbox
        todo = [k for k, code in enumerate(codes) if code is not None]
        # One job per program, so a sandbox failure costs that program only; each run is judged
        # in its worker as it ends and released (memory bounded by the workers, not the batch).
        verdicts = sandbox.run_many_safely(
            [Job(codes[k], tests[k][0], tests[k][2], stop_on_error) for k in todo],
            judge=lambda j, run: self._judge(run, tests[todo[j]][1], tests[todo[j]][2]),
        )
        by_index = dict(zip(todo, verdicts))

        keys = ("correct", "code/status", "code/pass_rate", "code/outcomes", "code/error",
                "code/output_bytes", "code/output_truncated", "code/judge_timeout", "failed", "error")
        scores, info = [], {key: [] for key in keys}
        for k, (_, outputs, _) in enumerate(tests):
            verdict = by_index.get(k)
            if verdict is None:
                verdict = {"outcomes": [COMPILE] * len(outputs), "error": "no fenced code block in the completion",
                           "failure": None}
            elif isinstance(verdict, BaseException):  # the sandbox failed for this program
                verdict = {"failure": f"{type(verdict).__name__}: {verdict}"[:300]}
            failure = verdict["failure"]
            if failure is None:
                outcomes, error = verdict["outcomes"], verdict["error"]
                value = score(outcomes, self.mode)
            else:
                outcomes, error, value = [RUNTIME] * len(outputs), failure, 0.0
            scores.append(value)
            info["correct"].append(failure is None and all(o == PASS for o in outcomes))
            info["code/status"].append(program_status(outcomes))
            info["code/pass_rate"].append(sum(o == PASS for o in outcomes) / len(outcomes))
            info["code/outcomes"].append(outcomes)
            info["code/error"].append(error)
            info["code/output_bytes"].append(verdict.get("output_bytes", 0))
            info["code/output_truncated"].append(verdict.get("truncated", False))
            info["code/judge_timeout"].append(verdict.get("judge_timeout", False))
            info["failed"].append(failure is not None)
            info["error"].append(failure)
        return RewardOutput(scores=scores, info=info)

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None


def bench(programs: int = 200, tests: int = 5, num_workers: int | None = None, isolation: str = "auto") -> dict:
    """Throughput of the sandbox on a trivial stdin/stdout program (programs/s, tests/s)."""
    reward = CodeReward(num_workers=num_workers, isolation=isolation)
    code = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    io = {"inputs": [f"{i} {i + 1}\n" for i in range(tests)], "outputs": [f"{2 * i + 1}\n" for i in range(tests)]}
    samples = [Sample(id=str(i), question="", meta={"input_output": io}) for i in range(programs)]
    reward(samples[:4], [code] * 4)  # warm-up: probe + zygote start
    start = time.perf_counter()
    out = reward(samples, [code] * programs)
    seconds = time.perf_counter() - start
    assert all(s == 1.0 for s in out.scores), "benchmark program failed"
    result = {
        "isolation": reward.sandbox.isolation,
        "num_workers": reward.sandbox.num_workers,
        "programs_per_s": programs / seconds,
        "tests_per_s": programs * tests / seconds,
        "mechanisms": reward.sandbox.mechanisms,
    }
    reward.close()
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Benchmark the code-execution sandbox.")
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--tests", type=int, default=5)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--isolation", default="auto")
    args = parser.parse_args()
    print(json.dumps(bench(args.programs, args.tests, args.workers, args.isolation), indent=2))
