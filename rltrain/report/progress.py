"""Progress of a run's phases: a bar with ETA on a terminal, plain periodic lines elsewhere, and
the time of each step split by phase.

A loop marks its phases; everything else (display, timing, the split in the step's metrics and
in the summary) follows::

    from rltrain.report import progress

    with progress.phase("rollout", total=len(prompts)) as p:   # total: None = no count
        for batch in batches:
            ...
            p.advance(len(batch))

``progress.phase`` uses the run's active :class:`Progress` (the one ``RunLogger`` creates on
rank 0); where there is none (other ranks, unit tests) it only times, silently. A phase's time
is *exclusive*: a phase opened inside another pauses the outer one, so the per-phase times of a
step add up to at most the step's wall time, and nothing is counted twice. ``RunLogger.log``
adds the phases' seconds since the previous step as ``time/<phase>`` to the step's metrics
(unless the loop already logged that key itself) and the summary shows the split per step.

On a terminal the bars are drawn inside the logger's live display (one line for the steps, one
per open phase, each with its count, elapsed time and ETA). Off a terminal, a phase that runs
longer than ``interval_s`` prints ``[eval] 64/200 (32%) 15 s, eta 32 s`` every ``interval_s``
seconds and a last line when it ends; short phases print nothing (the step line has their time).
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator, TextIO

# Phase names the loops use (others are allowed): shown in this order in the step line and summary.
PHASE_ORDER = ["rollout", "reward", "mc_values", "tree", "reference", "critic", "update", "eval"]


def fmt_seconds(s: float) -> str:
    """``42 s``, ``3:05`` (m:ss) or ``1:02:03`` (h:mm:ss)."""
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m}:{sec:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{sec:02d}"


class Phase:
    """An open phase: ``advance(k)`` counts ``k`` more items done; ``total`` may be set late."""

    def __init__(self, owner: "Progress", name: str, total: int | None, unit: str):
        self.owner, self.name, self.total, self.unit = owner, name, total, unit
        self.done = 0
        self.t0 = time.perf_counter()
        self._task = None  # rich task id, on a terminal
        self._next_line = self.t0 + owner.interval_s
        self._first: tuple[float, int] | None = None  # (time, count) of the first progress reported

    def advance(self, k: int = 1) -> None:
        self.done += k
        self._moved()
        self.owner._update(self)

    def _moved(self) -> None:
        if self._first is None and self.done > 0:
            self._first = (time.perf_counter(), self.done)

    def set_total(self, total: int | None) -> None:
        self.total = total
        self.owner._update(self)

    def update(self, done: int, total: int | None = None) -> None:
        """``done`` items of ``total`` (kept if None) so far: the form of a progress callback."""
        self.done = done
        if total is not None:
            self.total = total
        self._moved()
        self.owner._update(self)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def eta(self) -> float | None:
        """Seconds left at the rate since the first item was reported, once a later one has been,
        so a start-up cost paid before the first item (a prefill before the first decoded
        position) does not inflate the estimate; until then the rate since the phase began. None
        without a total or before the first item."""
        if not self.total or self.done <= 0:
            return None
        left = max(0, self.total - self.done)
        t_first, n_first = self._first or (self.t0, 0)
        if self.done > n_first:
            return (time.perf_counter() - t_first) / (self.done - n_first) * left
        return self.elapsed / self.done * left

    def line(self) -> str:
        """The plain progress line of this phase."""
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        if self.total:
            count += f" ({self.done / self.total:.0%})"
        if self.unit:
            count += f" {self.unit}"
        eta = self.eta()
        return f"[{self.name}] {count} {fmt_seconds(self.elapsed)}" + (f", eta {fmt_seconds(eta)}" if eta is not None else "")


class Progress:
    """Phase timing and display for one run (rank 0's ``RunLogger`` owns one).

    Args:
        bars: a ``rich.progress.Progress`` drawn by the caller's live display (a terminal), or
            None for plain lines.
        out: where plain lines go (default: stdout, like the step lines).
        interval_s: seconds between two plain lines of a long phase.
        quiet: time only, print nothing (other ranks).
    """

    def __init__(self, *, bars=None, out: TextIO | None = None, interval_s: float = 15.0, quiet: bool = False):
        self.bars, self.out, self.interval_s, self.quiet = bars, out, interval_s, quiet
        self._stack: list[tuple[Phase, float]] = []  # open phases with the time their exclusive count resumed
        self._since_step: dict[str, float] = {}  # exclusive seconds per phase since the last take_times()
        self._clock: Callable[[], float] = time.perf_counter

    # ------------------------------------------------------------------ the loops' interface

    @contextlib.contextmanager
    def phase(self, name: str, total: int | None = None, unit: str = "") -> Iterator[Phase]:
        """Time (exclusively) and show the block as phase ``name`` of ``total`` items."""
        now = self._clock()
        if self._stack:  # pause the enclosing phase
            outer, resumed = self._stack[-1]
            self._add(outer.name, now - resumed)
        p = Phase(self, name, total, unit)
        self._stack.append((p, now))
        if self.bars is not None and not self.quiet:
            p._task = self.bars.add_task(name, total=total, eta="")
        try:
            yield p
        finally:
            end = self._clock()
            _, resumed = self._stack.pop()
            self._add(name, end - resumed)
            if self._stack:  # the enclosing phase runs on from here
                self._stack[-1] = (self._stack[-1][0], end)
            if p._task is not None:
                self.bars.remove_task(p._task)
            elif self._printing() and p.elapsed >= self.interval_s:
                self._print(p.line() + " done")

    def take_times(self) -> dict[str, float]:
        """``{"time/<phase>": seconds}`` accumulated since the last call (open phases up to now), in
        ``PHASE_ORDER`` then first-seen order; resets the counts."""
        now = self._clock()
        if self._stack:
            top, resumed = self._stack[-1]
            self._add(top.name, now - resumed)
            self._stack[-1] = (top, now)
        known = [n for n in PHASE_ORDER if n in self._since_step]
        rest = [n for n in self._since_step if n not in PHASE_ORDER]
        out = {f"time/{n}": self._since_step[n] for n in known + rest}
        self._since_step = {}
        return out

    # ------------------------------------------------------------------ internals

    def _add(self, name: str, seconds: float) -> None:
        self._since_step[name] = self._since_step.get(name, 0.0) + max(0.0, seconds)

    def _printing(self) -> bool:
        return not self.quiet and self.bars is None

    def _print(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def _update(self, p: Phase) -> None:
        if p._task is not None:
            eta = p.eta()
            self.bars.update(p._task, completed=p.done, total=p.total,
                             eta=f"eta {fmt_seconds(eta)}" if eta is not None else "")
        elif self._printing() and not (p.total and p.done >= p.total):  # the end prints its own "done" line
            now = time.perf_counter()
            if now >= p._next_line:
                p._next_line = now + self.interval_s
                self._print(p.line())


def rich_bars():
    """The ``rich.progress.Progress`` the logger's live display draws (steps and phases)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

    return RichProgress(TextColumn("{task.description:>10}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), auto_refresh=False)


# --------------------------------------------------------------------------- the active run

_QUIET = Progress(quiet=True)
_active: Progress | None = None


def set_active(p: Progress | None) -> None:
    """Make ``p`` the run's progress (``RunLogger`` does it on rank 0; None when it closes)."""
    global _active
    _active = p


def active() -> Progress:
    """The run's progress, or one that only times (other ranks, no logger)."""
    return _active if _active is not None else _QUIET


def phase(name: str, total: int | None = None, unit: str = ""):
    """``active().phase(...)``: see the module docstring."""
    return active().phase(name, total=total, unit=unit)
