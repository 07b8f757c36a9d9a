"""Math answer reward: extract the final answer of a completion and compare it to a reference.

Pipeline for one completion:

1. :func:`extract_answer` — the last ``\\boxed{…}`` / ``\\fbox{…}`` (nested braces), else the
   later of "the answer is …" and ``#### …``, else the last number in the text.
2. :func:`normalize_answer` — strip LaTeX that does not change the value (``$``, ``\\text{}``,
   ``\\left``, ``\\!``, ``^\\circ``, ``\\%``, ``\\$``, units after a number, thousands commas,
   ``\\dfrac`` → ``\\frac``, a leading ``x =``).
3. Fast path: equal normalized strings are correct; two plain numbers (integers, decimals,
   ``a/b``, ``\\frac{a}{b}``, mixed numbers ``1\\frac{1}{4}``) are compared exactly as fractions,
   and that verdict is final. Synthetic arithmetic never gets past this step.
4. Otherwise math-verify (``math_verify.parse`` + ``verify``) decides LaTeX equivalence
   (``\\frac{\\sqrt2}{2}`` = ``\\sqrt{2}/2``, ``4a-2`` = ``-2+4a``, sets, intervals …).

math-verify enforces its timeouts with ``signal.alarm``, which only works in a process's main
thread, and sympy can hang on adversarial input; so step 4 runs in a
``ProcessPoolExecutor`` created on first use and reused. Workers start with the "spawn" method:
a forked child of a process that already runs torch's thread pools can deadlock. A worker
that hangs where signals cannot reach it (sympy inside C code) is caught by a batch deadline;
the pool is then killed and rebuilt, and the unfinished items score as wrong.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import multiprocessing
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from rltrain.types import RewardOutput, Sample

# Answers longer than this are not sent to sympy (they are never a final answer, and parsing
# them can take minutes).
_MAX_VERIFY_CHARS = 500
# Extra seconds the parent waits beyond the workers' own timeouts before it declares the pool
# hung (covers worker start-up: importing sympy takes ~1-3 s on a busy machine).
_POOL_GRACE_S = 60.0


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_ANSWER_IS_RE = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?", re.IGNORECASE)
_HASHES_RE = re.compile(r"####\s*")
_NUMBER_RE = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|-?\.\d+")


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the brace group opening at ``text[start] == "{"`` and the index after it."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None  # unbalanced: the completion was cut off inside the box


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{…}`` or ``\\fbox{…}``; ``None`` when absent.

    Nested braces are matched (``\\boxed{\\frac{1}{2}}`` → ``\\frac{1}{2}``); the brace-less
    form ``\\boxed 5`` gives ``5``.
    """
    found = None
    for match in _BOX_RE.finditer(text):
        pos = match.end()
        if pos < len(text) and text[pos] == "{":
            group = _braced(text, pos)
            if group is not None:
                found = group[0]
        elif pos < len(text) and match.group(0).endswith((" ", "\t")):
            token = re.match(r"[^\s$]+", text[pos:])
            if token and token.group(0).rstrip("."):
                found = token.group(0).rstrip(".")
    return found


def _rest_of_statement(text: str) -> str:
    """The answer phrase after a marker: up to the line end or a sentence-ending period."""
    line = text.strip().split("\n", 1)[0]
    line = re.split(r"\.(?:\s|$)", line, maxsplit=1)[0]
    return line.strip().strip("$").strip()


def extract_answer(text: str) -> str | None:
    """The final answer written in a completion, or ``None`` when it has none.

    Priority: the last ``\\boxed{}``/``\\fbox{}``; else whichever of "the answer is X" and
    ``#### X`` comes last; else the last number (``1,234``, ``-3.5``, ``1/2``).
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed.strip()
    markers = [m for pattern in (_ANSWER_IS_RE, _HASHES_RE) for m in pattern.finditer(text)]
    for marker in sorted(markers, key=lambda m: m.start(), reverse=True):
        phrase = _rest_of_statement(text[marker.end() :])
        if phrase:
            return phrase
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1].replace(" ", "") if numbers else None


# --------------------------------------------------------------------------------------------
# Normalization and the exact / numeric fast path
# --------------------------------------------------------------------------------------------

_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{")
_DROP = [
    r"\left", r"\right", r"\displaystyle", r"\!", r"\,", r"\;", r"\:", r"\ ",
    "^{\\circ}", "^\\circ", "°", r"\circ", r"\%", "%", r"\$", "$",
]
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_UNIT_RE = re.compile(r"(-?[\d.,/]*\d)\s+[a-zA-Z]{2,}[a-zA-Z .]*")
_LEADING_VAR_RE = re.compile(r"^[a-zA-Z]\s*=\s*(?=\S)")
_PLAIN_NUM_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_FRAC_RE = re.compile(r"([-+]?)(\d*)\\frac(?:\{(\d+)\}|(\d))(?:\{(\d+)\}|(\d))")


def _unwrap_text_commands(s: str) -> str:
    while (match := _TEXT_CMD_RE.search(s)) is not None:
        group = _braced(s, match.end() - 1)
        if group is None:
            break
        s = s[: match.start()] + group[0] + s[group[1] :]
    return s


def normalize_answer(answer: str) -> str:
    """Canonical text of an answer, for string comparison and numeric parsing.

    Examples: ``"\\$1,000.00"`` → ``"1000.00"``, ``"48^\\circ"`` → ``"48"``,
    ``"100\\text{ square units}"`` → ``"100"``, ``"\\dfrac{1}{2}"`` → ``"\\frac{1}{2}"``,
    ``"x = 5"`` → ``"5"``.
    """
    s = answer.strip()
    for wrap_open, wrap_close in ((r"\(", r"\)"), (r"\[", r"\]")):
        if s.startswith(wrap_open) and s.endswith(wrap_close):
            s = s[len(wrap_open) : -len(wrap_close)]
    s = _unwrap_text_commands(s)
    s = s.replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac").replace("{,}", ",")
    for token in _DROP:
        s = s.replace(token, "")
    s = s.strip().rstrip(".").strip()
    s = _LEADING_VAR_RE.sub("", s)
    unit = _UNIT_RE.fullmatch(s)  # "100 square units", "5 cm", "3 dollars"
    if unit:
        s = unit.group(1)
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    return re.sub(r"\s+", "", s)


def parse_number(normalized: str) -> Fraction | None:
    """Exact value of a normalized plain number, or ``None`` if it is not one.

    Accepts integers, decimals, ``a/b``, ``\\frac{a}{b}``, ``\\frac ab`` and mixed numbers
    (``12\\frac{3}{5}`` = 63/5), each with an optional sign.
    """
    s = normalized
    if _PLAIN_NUM_RE.fullmatch(s):
        return Fraction(s)
    if "/" in s:
        num, _, den = s.partition("/")
        if _PLAIN_NUM_RE.fullmatch(num) and _PLAIN_NUM_RE.fullmatch(den):
            den_value = Fraction(den)
            return Fraction(num) / den_value if den_value != 0 else None
        return None
    match = _FRAC_RE.fullmatch(s)
    if match is None:
        return None
    sign, whole, num_a, num_b, den_a, den_b = match.groups()
    den = int(den_a or den_b)
    if den == 0:
        return None
    value = int(whole or 0) + Fraction(int(num_a or num_b), den)
    return -value if sign == "-" else value


def quick_compare(predicted: str, reference: str) -> tuple[bool | None, str]:
    """Decide equivalence without sympy: ``(verdict, method)``, verdict ``None`` = undecided.

    Equal normalized strings → ``(True, "exact")``. Two plain numbers → exact fraction
    comparison, ``(bool, "numeric")``; with a percent sign on either side ``25\\%`` also equals
    ``0.25``. Anything else → ``(None, "none")``: only math-verify can tell.
    """
    pred, ref = normalize_answer(predicted), normalize_answer(reference)
    if pred and pred == ref:
        return True, "exact"
    pred_value, ref_value = parse_number(pred), parse_number(ref)
    if pred_value is None or ref_value is None:
        return None, "none"
    if pred_value == ref_value:
        return True, "numeric"
    if "%" in predicted or "%" in reference:
        return pred_value in (ref_value / 100, ref_value * 100), "numeric"
    return False, "numeric"


# --------------------------------------------------------------------------------------------
# math-verify in worker processes
# --------------------------------------------------------------------------------------------


def _init_worker() -> None:
    """Import sympy/math-verify once per worker and silence its per-item log lines."""
    import math_verify  # noqa: F401

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)


def math_verify_equal(predicted: str, reference: str, timeout_s: int) -> bool:
    """math-verify's verdict on two extracted answers (runs in a worker process).

    Each answer is wrapped in ``$…$`` so math-verify parses the whole string as LaTeX. Its
    own signal-based timeouts bound each parse and each comparison to ``timeout_s`` seconds;
    a timeout counts as not equal.
    """
    from math_verify import parse, verify

    gold = parse(f"${reference}$", parsing_timeout=timeout_s)
    pred = parse(f"${predicted}$", parsing_timeout=timeout_s)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout_s))


# --------------------------------------------------------------------------------------------
# The reward
# --------------------------------------------------------------------------------------------


@dataclass
class _Verdict:
    correct: bool
    extracted: str | None
    method: str  # "exact" | "numeric" | "math_verify" | "timeout" | "no_answer" | "none"


class MathReward:
    """Rule-based math reward: ``correct_score`` if the final answer equals the reference.

    Args:
        correct_score: score of a correct answer.
        wrong_score: score of a wrong or missing answer.
        format_score: if set, the score of a wrong answer that is at least inside
            ``\\boxed{}`` (a shaping bonus for following the output format); ``None`` = off.
        use_math_verify: fall back to math-verify for answers the fast path cannot decide
            (LaTeX expressions). Off = string/number comparison only (no worker processes).
        timeout_s: whole seconds math-verify may spend on each parse and each comparison
            (its timeouts use ``signal.alarm``); a timed-out item scores as wrong.
        num_workers: worker processes for math-verify, created on first use and reused.
            They use the "spawn" start method, so a script (not the ``rltrain`` CLI) that
            scores LaTeX answers must run under ``if __name__ == "__main__":``.

    ``reward(samples, completions)`` compares each completion to ``sample.answer``;
    ``reward.score(completion, reference)`` scores a single pair. ``info`` holds
    ``correct`` (bool), ``extracted`` (answer string or ``None``) and ``method`` (which step
    decided: exact, numeric, math_verify, timeout, no_answer, none).
    """

    def __init__(
        self,
        correct_score: float = 1.0,
        wrong_score: float = 0.0,
        format_score: float | None = None,
        use_math_verify: bool = True,
        timeout_s: int = 5,
        num_workers: int = 2,
    ) -> None:
        if timeout_s < 1 or int(timeout_s) != timeout_s:
            raise ValueError(
                f"reward.timeout_s must be a whole number of seconds >= 1 (math-verify's "
                f"signal timeouts are whole seconds), got {timeout_s}"
            )
        if num_workers < 1:
            raise ValueError(f"reward.num_workers must be >= 1, got {num_workers}")
        self.correct_score = correct_score
        self.wrong_score = wrong_score
        self.format_score = format_score
        self.use_math_verify = use_math_verify
        self.timeout_s = int(timeout_s)
        self.num_workers = num_workers
        self._pool: cf.ProcessPoolExecutor | None = None
        # Seams for tests: the function run in the workers, and the hang-guard slack.
        self._verify_fn = math_verify_equal
        self._pool_grace_s = _POOL_GRACE_S

    # -- public API ---------------------------------------------------------------------------

    def __call__(self, samples: Sequence[Sample], completions: Sequence[str]) -> RewardOutput:
        if len(samples) != len(completions):
            raise ValueError(f"{len(samples)} samples for {len(completions)} completions")
        verdicts = self._judge(list(completions), [s.answer for s in samples])
        scores = [self._score_of(v, c) for v, c in zip(verdicts, completions)]
        return RewardOutput(
            scores=scores,
            info={
                "correct": [v.correct for v in verdicts],
                "extracted": [v.extracted for v in verdicts],
                "method": [v.method for v in verdicts],
            },
        )

    def score(self, completion: str, reference: str) -> float:
        """Score one completion against a reference answer string (e.g. ``"\\frac{1}{2}"``)."""
        (verdict,) = self._judge([completion], [reference])
        return self._score_of(verdict, completion)

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> MathReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        # The pool cannot be pickled; a copy (e.g. in another process) starts its own.
        return {**self.__dict__, "_pool": None}

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    # -- internals ----------------------------------------------------------------------------

    def _score_of(self, verdict: _Verdict, completion: str) -> float:
        if verdict.correct:
            return self.correct_score
        if self.format_score is not None and extract_boxed(completion) is not None:
            return self.format_score
        return self.wrong_score

    def _judge(self, completions: Sequence[str], references: Sequence[str]) -> list[_Verdict]:
        verdicts: list[_Verdict] = []
        pending: list[tuple[int, str, str]] = []  # (index, predicted, reference)
        for i, (completion, reference) in enumerate(zip(completions, references)):
            predicted = extract_answer(completion)
            reference = extract_boxed(reference) or reference
            if predicted is None:
                verdicts.append(_Verdict(False, None, "no_answer"))
                continue
            verdict, method = quick_compare(predicted, reference)
            verdicts.append(_Verdict(bool(verdict), predicted, method))
            if verdict is not None:
                continue
            if (
                self.use_math_verify
                and len(predicted) <= _MAX_VERIFY_CHARS
                and len(reference) <= _MAX_VERIFY_CHARS
            ):
                pending.append((i, predicted, reference))
        if pending:
            for i, correct in self._verify_in_pool(pending).items():
                verdicts[i].correct = bool(correct)
                verdicts[i].method = "timeout" if correct is None else "math_verify"
        return verdicts

    def _verify_in_pool(self, pending: list[tuple[int, str, str]]) -> dict[int, bool | None]:
        """math-verify verdicts by index; ``None`` where the pool hung and was replaced."""
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                max_workers=self.num_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
            )
        try:
            futures = {
                self._pool.submit(self._verify_fn, pred, ref, self.timeout_s): i
                for i, pred, ref in pending
            }
            # Each item is bounded by math-verify's own timeouts (2 parses + comparisons);
            # the batch deadline only catches a worker stuck where signals cannot reach it.
            rounds = math.ceil(len(pending) / self.num_workers)
            deadline = rounds * 4 * self.timeout_s + self._pool_grace_s
            done, not_done = cf.wait(futures, timeout=deadline)
            results: dict[int, bool | None] = {futures[f]: f.result() for f in done}
        except cf.BrokenExecutor as exc:
            self._kill_pool()
            raise RuntimeError(
                "a math-verify worker process died. Workers use the 'spawn' start method, so "
                "a script that scores math must start its work under "
                "`if __name__ == '__main__':`; or turn math-verify off with "
                "reward.use_math_verify=false"
            ) from exc
        if not_done:
            self._kill_pool()
            results.update({futures[f]: None for f in not_done})
        return results

    def _kill_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # ProcessPoolExecutor cannot interrupt a running task; kill the hung workers.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
