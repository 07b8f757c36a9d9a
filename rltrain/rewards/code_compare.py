"""Comparing a program's output with the expected output, for ``reward=code``: stdin/stdout
programs token by token (``stdout_matches``), call-based programs by their JSON return value
(``call_result_matches``).

Every byte here is hostile input (docs/sandbox.md, "Judging"): output stays bytes and is never
decoded; every parse scans once (no backtracking regex); integers compare as digit strings (no
``int()`` conversion limit); JSON is decoded only when it is not far longer than the expected
value's, with big integers kept as text and its depth bounded by the expected value's; a
``deadline`` turns a comparison that runs too long into ``JudgeTimeout``.
"""
from __future__ import annotations

import json
import math
import re
import time
from typing import Any

_TOKEN_RE = re.compile(rb"\S+")  # bytes: ASCII whitespace separates tokens
_SMALL_INT_DIGITS = 4000  # below the interpreter's int <-> str conversion limit (4300)
_SIGNS = (b"+", b"-")
_JSON_SLACK = 32  # a return value's JSON may be this many times the expected value's (floats' digits)
_FLOAT_WORDS = (b"inf", b"infinity", b"nan")


class JudgeTimeout(Exception):
    """Comparing a program's output took longer than ``judge_timeout``."""


def _as_text(value: Any) -> str:
    """A stdin/stdout test field as text (some APPS/TACO rows store a list of lines)."""
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return value if isinstance(value, str) else str(value)


def _floats_close(x: float, y: float, tol: float) -> bool:
    if math.isnan(x) or math.isnan(y):
        return False
    if math.isinf(x) or math.isinf(y):
        return x == y
    return abs(x - y) <= tol * max(1.0, abs(y))


# Number syntax is checked with bytes methods that scan once (``isdigit`` is ASCII-only on
# bytes, ``lstrip``, ``partition``), never with a regex: ``0*(\d+)`` and ``\d+\.?\d*``
# backtrack quadratically on a long token that fails at its end (40,000 zeros and an "x" cost
# ~27 s of trainer CPU).

def _integer(token: bytes) -> tuple[bool, bytes] | None:
    """``(negative, digits without leading zeros)`` of an ASCII integer token, else None."""
    body = token[1:] if token[:1] in _SIGNS else token
    if not body.isdigit():
        return None
    digits = body.lstrip(b"0") or b"0"
    return token[:1] == b"-" and digits != b"0", digits


def _is_decimal(token: bytes) -> bool:
    """``[+-]?(digits[.digits][e[+-]digits] | .digits[e[+-]digits] | inf | infinity | nan)``."""
    body = (token[1:] if token[:1] in _SIGNS else token).lower()
    if body in _FLOAT_WORDS:
        return True
    mantissa, e, exponent = body.partition(b"e")
    if e and not (exponent[1:] if exponent[:1] in _SIGNS else exponent).isdigit():
        return False
    whole, _, fraction = mantissa.partition(b".")
    return bool(whole or fraction) and (not whole or whole.isdigit()) and (not fraction or fraction.isdigit())


def _numbers_close(a: bytes, b: bytes, tol: float) -> bool:
    """Two output tokens: integers exactly equal, otherwise decimal numbers within ``tol``."""
    ia, ib = _integer(a), _integer(b)
    if ia and ib:
        return ia == ib  # compared as text: any length, no int()
    if _is_decimal(a) and _is_decimal(b):
        return _floats_close(float(a), float(b), tol)  # float() has no length limit
    return False


def stdout_matches(got: bytes | str, expected: Any, float_tol: float = 1e-6, deadline: float | None = None) -> bool:
    """Compare program output with the expected output, whitespace- and float-tolerant.

    Tokens (split on ASCII whitespace) must be equal bytes, or both numeric: integers exactly
    equal, other numbers within ``float_tol`` (absolute, relative above magnitude 1). The
    output's tokens are streamed and every step is linear in the token, so the cost is bounded
    by the output's size and the expected tokens' count; past ``deadline`` (``time.monotonic``)
    ``JudgeTimeout`` is raised.
    """
    if isinstance(got, str):
        got = got.encode("utf-8", "surrogatepass")
    got_tokens = _TOKEN_RE.finditer(got)
    for want in _as_text(expected).encode("utf-8", "surrogatepass").split():
        if deadline is not None and time.monotonic() > deadline:
            raise JudgeTimeout
        token = next(got_tokens, None)
        if token is None:
            return False
        g = token.group()
        if g != want and not _numbers_close(g, want, float_tol):
            return False
    return next(got_tokens, None) is None


class _BigInt(str):
    """A JSON integer too long for ``int()`` (kept as its text)."""


def _json_int(text: str):
    return int(text) if len(text) <= _SMALL_INT_DIGITS else _BigInt(text)


def _int_text(value: int) -> str:
    """Decimal text of a (trusted, expected) int of any size."""
    import decimal

    return str(value) if value.bit_length() < 13000 else str(decimal.Decimal(value))  # 13000 bits < 4000 digits


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of lists/dicts in ``value``, iteratively; stops counting past ``limit``."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((v, depth) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _values_close(got: Any, want: Any, tol: float) -> bool:
    if isinstance(got, _BigInt):
        if isinstance(want, bool) or not isinstance(want, (int, float)):
            return False
        if isinstance(want, float):
            return _floats_close(float(got), want, tol)
        return _integer(got.encode()) == _integer(_int_text(want).encode())
    if isinstance(got, bool) or isinstance(want, bool):
        return got == want and type(got) is type(want)
    if isinstance(got, (int, float)) and isinstance(want, (int, float)):
        if isinstance(got, int) and isinstance(want, int):
            return got == want
        try:
            return _floats_close(float(got), float(want), tol)
        except OverflowError:
            return False
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(_values_close(g, w, tol) for g, w in zip(got, want))
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(_values_close(got[k], want[k], tol) for k in got)
    return got == want


def _json_length(value: Any) -> int:
    """About the length of ``value``'s JSON text (at least it), without writing it: an int of any
    size (``json.dumps`` refuses more than 4300 digits), iteratively (no recursion limit)."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() * 0.30103 + 2  # decimal digits and a sign
        elif isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, (list, tuple)):
            total += 2 + 2 * len(item)
            stack.extend(item)
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        else:  # float and anything else: its repr
            total += len(repr(item))
    return int(total)


def call_result_matches(got_json: bytes | str, expected: Any, float_tol: float = 1e-6) -> bool:
    """Compare a call-based return value (JSON text from the sandbox) with the expected output.

    Accepts an exact (tolerant) match, or a match of the only element of a one-element
    expected list (APPS wraps most expected return values that way). Hostile text is a
    mismatch, never an exception: integers too long for ``int()`` stay text, decoding stops
    at the interpreter's recursion limit, a value nested deeper than the expected one is
    not compared at all, and text longer than ``_JSON_SLACK`` times the expected value's JSON
    (plus 4 KiB) is a mismatch without being parsed: decoding builds Python objects of up to
    ~60 bytes per character of hostile text (``[[],[],...]``), so the trainer's memory for it
    is bounded by the expected value, not by the output cap. The slack covers what the same
    value can look like (a float's repr is at most 24 characters, the smallest JSON value 1).
    """
    if len(got_json) > _JSON_SLACK * _json_length(expected) + 4096:
        return False
    try:
        got = json.loads(got_json, parse_int=_json_int)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return False
    if _depth(got, _depth(expected, 10_000)) > _depth(expected, 10_000):
        return False
    if _values_close(got, expected, float_tol):
        return True
    return isinstance(expected, list) and len(expected) == 1 and _values_close(got, expected[0], float_tol)
