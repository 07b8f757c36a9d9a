"""Schema fields that carry their own check, written next to the field (litgpt's args.py style):
``one_of(CHOICES, default)`` for a name out of a fixed list, ``bounded(default, "in (0, 1]")`` for a
number's range. ``check_fields`` walks a config and checks every such field, naming its key; it is
the one place these checks run (``rules.validate`` calls it first).

A list of names is written once: where the code that implements the names keeps it (e.g.
``algos.core.AGGREGATION_MODES``), or, for names only the config knows, in the ``one_of`` call.
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Any

from rltrain.config.errors import ConfigError

_COMPARE = {"≥": operator.ge, ">": operator.gt, "≤": operator.le, "<": operator.lt}


def one_of(choices, default):
    """A field whose valid values are ``choices`` (listed here, or where the implementation keeps them)."""
    choices = tuple(choices)
    if default not in choices:
        raise ValueError(f"default {default!r} is not one of {choices}")
    return dataclasses.field(default=default, metadata={"choices": choices})


def bounded(default, rule: str, note: str = ""):
    """A number with its valid range ``rule``: ``"≥ 0"``, ``"> 1"``, ``"in (0, 1]"``, ``"in [0, 0.5)"``.
    ``None`` passes (an Optional field's "off"); ``note`` follows the message (what 0 or null means)."""
    if default is not None and not holds(rule, default):
        raise ValueError(f"default {default!r} is not {rule}")
    return dataclasses.field(default=default, metadata={"range": rule, "note": note})


def holds(rule: str, value: float) -> bool:
    """Whether ``value`` satisfies ``rule`` (the grammar of ``bounded``)."""
    if rule.startswith("in "):
        low, high = (float(x) for x in rule[4:-1].split(","))
        above = value > low if rule[3] == "(" else value >= low
        below = value < high if rule[-1] == ")" else value <= high
        return above and below
    op, bound = rule.split(" ")
    return _COMPARE[op](value, float(bound))


def check_choice(key: str, value, valid) -> None:
    """ConfigError naming ``key`` and listing the valid names when ``value`` is not one of them."""
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(str(v) for v in valid)}")


def check_fields(node: Any, prefix: str) -> None:
    """Check every ``one_of`` / ``bounded`` field of dataclass ``node`` and of the dataclasses inside
    it; raise ConfigError naming the key (``prefix.field``)."""
    for f in dataclasses.fields(node):
        key, value = f"{prefix}.{f.name}" if prefix else f.name, getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, key)
        elif "choices" in f.metadata:
            check_choice(key, value, f.metadata["choices"])
        elif "range" in f.metadata and value is not None and not holds(f.metadata["range"], value):
            note = f" {f.metadata['note']}" if f.metadata["note"] else ""
            raise ConfigError(f"{key}={value} must be {f.metadata['range']}{note}")
