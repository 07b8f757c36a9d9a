"""Run logging: ``metrics.jsonl`` (one JSON object per step), optional TensorBoard, and a rich
live display (step of total, ETA, the headline metrics, time per phase). When stdout is not a
terminal the display falls back to one plain line per step, which is what CI logs show.

On resume, ``metrics.jsonl`` is truncated to the checkpoint's step so that an interrupted and
resumed run has exactly one line per step, identical to an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

# The step's headline, where the loop logs it (PG loops: reward..tok/s; PPO adds the critic;
# DPO and SFT their losses). Metrics a loop does not log are left out of its line and table.
HEADLINE = [
    ("reward/mean", "reward"), ("reward/accuracy", "acc"), ("actor/kl", "kl"), ("actor/entropy", "entropy"),
    ("actor/clipfrac", "clip"), ("response/length_mean", "len"), ("perf/tokens_per_s", "tok/s"),
    ("critic/value_loss", "v_loss"), ("critic/explained_var", "expl_var"),
    ("dpo/loss", "dpo_loss"), ("rewards/accuracy", "pref_acc"), ("rewards/margin", "margin"),
    ("sft/nll", "nll"),
]
PHASES = ["time/rollout", "time/reward", "time/mc_values", "time/reference", "time/critic", "time/update"]


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

    def __init__(self, run_dir: str | Path, total_steps: int, *, console: bool = True,
                 tensorboard: bool = False, start_step: int = 0, title: str = "rltrain"):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        truncate_metrics(self.path, start_step)
        self.file = open(self.path, "a", buffering=1)
        self.total = total_steps
        self.clock = None  # loops.common.StepClock, set by it: with train.time_budget_s the ETA is at most what is left
        self.start_step = start_step
        self.t0 = time.time()
        self.title = title
        self.console = Console(stderr=False)
        self.live = None
        if console and sys.stdout.isatty():
            self.live = Live(self._table({}, start_step), console=self.console, refresh_per_second=2)
            self.live.start()
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def _eta(self, step: int) -> str:
        done = step - self.start_step
        if done <= 0:
            return "?"
        left = (time.time() - self.t0) / done * (self.total - step)
        if self.clock is not None and self.clock.budget > 0:
            left = min(left, max(0.0, self.clock.budget - self.clock.spent))
        return time.strftime("%M:%S", time.gmtime(left)) if left < 3600 else f"{left / 3600:.1f}h"

    def _table(self, m: dict, step: int) -> Table:
        t = Table(title=f"{self.title} — step {step}/{self.total}  ETA {self._eta(step)}", expand=False)
        shown = [(k, label) for k, label in HEADLINE if k in m]
        for _, label in shown:
            t.add_column(label, justify="right")
        t.add_row(*[_fmt(m[k]) for k, _ in shown])
        phases = "  ".join(f"{p.split('/')[1]} {m[p]:.1f}s" for p in PHASES if p in m)
        if phases:
            t.caption = phases
        return t

    def log(self, step: int, metrics: dict) -> None:
        row = {"step": step, "wall_time": round(time.time() - self.t0, 3), **metrics}
        self.file.write(json.dumps(row, default=float) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        if self.live is not None:
            self.live.update(self._table(metrics, step))
        else:
            parts = [f"{label}={_fmt(metrics[k])}" for k, label in HEADLINE if k in metrics]
            parts += [f"{p.split('/')[1]}={metrics[p]:.1f}s" for p in PHASES if p in metrics]
            print(f"[step {step}/{self.total} eta {self._eta(step)}] " + " ".join(parts), flush=True)

    def event(self, step: int, kind: str, metrics: dict) -> None:
        """A non-step record (evaluation, summary) in metrics.jsonl."""
        self.file.write(json.dumps({"step": step, "event": kind, **metrics}, default=float) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)
        msg = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
        (self.live.console if self.live else self.console).print(f"[bold]{kind}[/] step {step}: {msg}")

    def summary(self, rows: list[tuple[str, str, str]]) -> None:
        """Final table: (metric, before, after)."""
        self.close_live()
        t = Table(title=f"{self.title}: summary")
        for c in ("metric", "before", "after"):
            t.add_column(c, justify="right")
        for r in rows:
            t.add_row(*r)
        self.console.print(t)

    def close_live(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def close(self) -> None:
        self.close_live()
        self.file.close()
        if self.tb is not None:
            self.tb.close()
