"""Markdown table of scripts/repro/spo.sh's runs (outputs/spo/<cell>_d<difficulty>_s<seed>): per
cell and difficulty, the held-out gain (mean and min–max over seeds), steps, summed step time and
gain per minute of training. Usage: python scripts/repro/spo_table.py [OUT_DIR]"""
from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

RUN = re.compile(r"^(?P<cell>E\d_\w+?)_d(?P<d>\d+)_s(?P<seed>\d+)$")


def run_summary(run: Path) -> dict | None:
    """Accuracy before/after, steps and summed step time of one finished run, else None."""
    evals, steps = [], []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "eval":
            evals.append(rec)
        elif "time/step" in rec:
            steps.append(rec)
    if len(evals) < 2 or evals[-1]["step"] == 0:
        return None
    return {"before": evals[0]["accuracy"], "after": evals[-1]["accuracy"], "steps": len(steps),
            "time": sum(r["time/step"] for r in steps)}


def cells(root: Path) -> dict[tuple[str, int], list[dict]]:
    out: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for run in sorted(root.iterdir()):
        m = RUN.match(run.name)
        if m and (run / "metrics.jsonl").exists() and (s := run_summary(run)) is not None:
            out[(m["cell"], int(m["d"]))].append(s)
    return out


def table(root: Path) -> str:
    lines = ["| cell | difficulty | seeds | held-out gain, mean (min – max) | steps | training time | gain per min |",
             "|---|---|---|---|---|---|---|"]
    for (cell, d), runs in sorted(cells(root).items()):
        gains = [100 * (r["after"] - r["before"]) for r in runs]
        t = sum(r["time"] for r in runs) / len(runs)
        mean = sum(gains) / len(gains)
        lines.append(f"| {cell} | {d} | {len(runs)} | {mean:+.1f} ({min(gains):+.1f} – {max(gains):+.1f}) | "
                     f"{sum(r['steps'] for r in runs) / len(runs):.1f} | {t:.0f} s | {mean / (t / 60):+.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/spo")))
