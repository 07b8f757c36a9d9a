"""Run logging: ``metrics.jsonl`` (one JSON object per step), ``samples.jsonl`` (what the model
wrote: ``report.samples``), the experiment trackers of ``log.trackers`` (``report.trackers``: they
get the config, every step's metrics, the evaluation events, the samples and the summary, and can
never stop or slow the run), and a rich live display (a steps bar with ETA, a bar per open phase,
the headline metrics, time per phase). When stdout is not a terminal the display falls back to one
plain line per step (and periodic lines for long phases, ``rltrain.report.progress``), which is what
CI logs show. The summary ends with where the time went: seconds per step by phase, and the
evaluations.

On resume, ``metrics.jsonl`` (and ``samples.jsonl``) is truncated to the checkpoint's step so that
an interrupted and resumed run has exactly one line per step, identical to an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from rltrain.report import progress as progress_mod
from rltrain.report.samples import SamplesFile
from rltrain.report.trackers import RunInfo, start_trackers

# The step's headline, where the loop logs it (PG loops: reward..tok/s; PPO adds the critic;
# DPO and SFT their losses). Metrics a loop does not log are left out of its line and table.
HEADLINE = [
    ("reward/mean", "reward"), ("reward/accuracy", "acc"), ("actor/kl", "kl"), ("actor/entropy", "entropy"),
    ("actor/clipfrac", "clip"), ("response/length_mean", "len"), ("perf/tokens_per_s", "tok/s"),
    ("mismatch/abs_dlogp_mean", "|Δlogp|"),
    ("critic/value_loss", "v_loss"), ("critic/explained_var", "expl_var"),
    ("dpo/loss", "dpo_loss"), ("rewards/accuracy", "pref_acc"), ("rewards/margin", "margin"),
    ("sft/nll", "nll"),
]
PHASES = [f"time/{p}" for p in progress_mod.PHASE_ORDER]


def phase_keys(m: dict) -> list[str]:
    """The ``time/<phase>`` keys of a step's metrics (not ``time/step``), known phases first."""
    extra = sorted(k for k in m if k.startswith("time/") and k not in PHASES and k != "time/step")
    return [p for p in PHASES if p in m] + extra


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v or math.isinf(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only the metric lines with step ≤ last_step (and non-step lines before them)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if row.get("step", 0) <= last_step:
            keep.append(line)
    path.write_text("".join(k + "\n" for k in keep))


class RunLogger:
    """Writes metrics and drives the console. Only rank 0 creates one."""

    def __init__(self, run_dir: str | Path, total_steps: int, *, console: bool = True, trackers=(),
                 config: dict | None = None, project: str = "rltrain", run_name: str | None = None,
                 samples_max_mb: float = 100.0, start_step: int = 0, title: str = "rltrain"):
        """``trackers``: names of ``report.trackers.TRACKERS``, given ``config`` (the resolved config
        as nested dicts), ``project`` and ``run_name`` (default: the run directory)."""
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        truncate_metrics(self.path, start_step)
        self.file = open(self.path, "a", buffering=1)
        self.total = total_steps
        self.clock = None  # loops.lifecycle.StepClock, set by it: with train.time_budget_s the ETA is at most what is left
        self.start_step = start_step
        self.t0 = time.time()
        self.steps_t0 = self.t0  # the ETA counts from here: after the initial evaluation when there is one
        self.title = title
        self.console = Console(stderr=False)
        self.live = None
        self.bars = None
        self._table_now = self._table({}, start_step)
        self._phase_sums: dict[str, float] = {}  # summed time/<phase> and time/step of the logged steps
        self._steps_logged = 0
        self._evals: list[float] = []  # seconds of each evaluation event
        if console and sys.stdout.isatty():
            self.bars = progress_mod.rich_bars()
            self._steps_task = self.bars.add_task("steps", total=total_steps, completed=start_step, eta="")
            self.live = Live(self._renderable(), console=self.console, refresh_per_second=2)
            self.live.start()
        self.progress = progress_mod.Progress(bars=self.bars)
        progress_mod.set_active(self.progress)
        self.samples_file = SamplesFile(self.run_dir / "samples.jsonl", max_mb=samples_max_mb, start_step=start_step)
        self._last_step = start_step
        self._last_eval: dict = {}
        self.trackers = start_trackers(trackers, RunInfo(self.run_dir, project, run_name or str(run_dir),
                                                         config or {}))

    def _eta(self, step: int) -> str:
        done = step - self.start_step
        if done <= 0:
            return "?"
        left = (time.time() - self.steps_t0) / done * (self.total - step)
        if self.clock is not None and self.clock.budget > 0:
            left = min(left, max(0.0, self.clock.budget - self.clock.spent))
        return time.strftime("%M:%S", time.gmtime(left)) if left < 3600 else f"{left / 3600:.1f}h"

    def _table(self, m: dict, step: int) -> Table:
        t = Table(title=f"{self.title} — step {step}/{self.total}  ETA {self._eta(step)}", expand=False)
        shown = [(k, label) for k, label in HEADLINE if k in m]
        for _, label in shown:
            t.add_column(label, justify="right")
        t.add_row(*[_fmt(m[k]) for k, _ in shown])
        phases = "  ".join(f"{p.split('/')[1]} {m[p]:.1f}s" for p in phase_keys(m))
        if phases:
            t.caption = phases
        return t

    def _renderable(self):
        return Group(self.bars, self._table_now) if self.bars is not None else self._table_now

    def log(self, step: int, metrics: dict) -> None:
        """One step's metrics. The phases timed with ``rltrain.report.progress`` since the previous
        step are added as ``time/<phase>`` where the loop did not log that key itself."""
        for k, v in self.progress.take_times().items():
            metrics.setdefault(k, v)
        for k in phase_keys(metrics) + (["time/step"] if "time/step" in metrics else []):
            self._phase_sums[k] = self._phase_sums.get(k, 0.0) + float(metrics[k])
        self._steps_logged += 1
        row = {"step": step, "wall_time": round(time.time() - self.t0, 3), **metrics}
        self.file.write(json.dumps(row, default=float) + "\n")
        self._last_step = step
        self._to_trackers("log", step, _numbers(metrics))
        if self.live is not None:
            self._table_now = self._table(metrics, step)
            self.bars.update(self._steps_task, completed=step, eta=f"eta {self._eta(step)}")
            self.live.update(self._renderable())
        else:
            parts = [f"{label}={_fmt(metrics[k])}" for k, label in HEADLINE if k in metrics]
            parts += [f"{p.split('/')[1]}={metrics[p]:.1f}s" for p in phase_keys(metrics)]
            print(f"[step {step}/{self.total} eta {self._eta(step)}] " + " ".join(parts), flush=True)

    def event(self, step: int, kind: str, metrics: dict) -> None:
        """A non-step record (evaluation, summary) in metrics.jsonl."""
        self.file.write(json.dumps({"step": step, "event": kind, **metrics}, default=float) + "\n")
        self._to_trackers("log", step, _numbers({f"{kind}/{k}": v for k, v in metrics.items()}))
        if kind == "eval":
            self._last_eval = _numbers(metrics)
        if kind == "eval" and "time_s" in metrics:
            self._evals.append(float(metrics["time_s"]))
        if step == self.start_step and self._steps_logged == 0:
            self.progress.take_times()  # setup and the initial evaluation are not step 1's time
            self.steps_t0 = time.time()
        msg = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
        (self.live.console if self.live else self.console).print(f"[bold]{kind}[/] step {step}: {msg}")

    def samples(self, step: int, kind: str, rows: list[dict]) -> None:
        """Rows of ``report.samples`` (``kind``: train | eval) into samples.jsonl and the trackers' tables."""
        if rows:
            written = self.samples_file.write(step, rows)
            if written:
                self._to_trackers("samples", step, kind, written)

    def _to_trackers(self, method: str, *args) -> None:
        for t in self.trackers:
            t.call(method, *args)

    def summary(self, rows: list[tuple[str, str, str]]) -> None:
        """Final table: (metric, before, after). The trackers get it with the last evaluation's
        numbers (``final_eval/<key>``), the steps done, the run time and the mean time per step by phase."""
        values = {f"final_eval/{k}": v for k, v in self._last_eval.items()}
        values.update({"steps": float(self._last_step), "run_time_s": time.time() - self.t0})
        if self._steps_logged:
            values.update({f"time_per_step/{k.split('/', 1)[1]}": v / self._steps_logged
                           for k, v in self._phase_sums.items()})
        self._to_trackers("summary", self._last_step, values, list(rows))
        self.close_live()
        t = Table(title=f"{self.title}: summary")
        for c in ("metric", "before", "after"):
            t.add_column(c, justify="right")
        for r in rows:
            t.add_row(*r)
        self.console.print(t)
        split = self.time_split()
        if split is not None:
            self.console.print(split)

    def time_split(self) -> Table | None:
        """Where the time went: mean seconds per step by phase and their share of the step, the
        rest of the step ("other"), and the evaluations (None before any step was logged)."""
        n = self._steps_logged
        if n == 0:
            return None
        t = Table(title=f"time per step ({n} step{'s' if n != 1 else ''})")
        for c in ("phase", "s / step", "share"):
            t.add_column(c, justify="right")
        step_s = self._phase_sums.get("time/step", 0.0) / n
        shown = 0.0
        for k in phase_keys(self._phase_sums):
            per = self._phase_sums[k] / n
            shown += per
            t.add_row(k.split("/", 1)[1], f"{per:.1f}", f"{per / step_s:.0%}" if step_s > 0 else "-")
        if step_s > 0:
            other = max(0.0, step_s - shown)
            t.add_row("other", f"{other:.1f}", f"{other / step_s:.0%}")
            t.add_row("[bold]step[/]", f"{step_s:.1f}", "100%")
        if self._evals:
            t.caption = (f"evaluations {' + '.join(f'{e:.1f}' for e in self._evals)} s; "
                         f"run {time.time() - self.t0:.0f} s")
        return t

    def close_live(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def close(self) -> None:
        self.close_live()
        if progress_mod.active() is self.progress:
            progress_mod.set_active(None)
        self.file.close()
        self.samples_file.close()
        for t in self.trackers:
            t.close()


def _numbers(metrics: dict) -> dict[str, float]:
    """The numeric entries (what trackers plot); bools as 0/1."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
