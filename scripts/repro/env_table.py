"""The tables of docs/environments.md ("Results", SFT then GRPO) from the runs of scripts/repro/env_sft_grpo.sh:
held-out accuracy (and, for the calculator, the tool-call rate) of the base model, after SFT and after SFT +
GRPO, per seed, with the mean. Missing runs are shown as "-".

    python scripts/repro/env_table.py [outputs/env_runs]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def evals(run: Path) -> list[dict]:
    f = run / "metrics.jsonl"
    if not f.exists():
        return []
    rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    return [r for r in rows if r.get("event") == "eval"]


def first_last(run: Path) -> tuple[dict | None, dict | None]:
    ev = evals(run)
    first = next((e for e in ev if e["step"] == 0), None)
    last = next((e for e in reversed(ev) if e["step"] > 0), None)
    return first, last


def cell(e: dict | None, tools: bool) -> str:
    if e is None:
        return "-"
    acc = f"{100 * e['accuracy']:.0f}%"
    return f"{acc} / {100 * e.get('tool_call_rate', 0):.0f}%" if tools else acc


def steps(run: Path) -> list[dict]:
    f = run / "metrics.jsonl"
    rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.exists() else []
    return [r for r in rows if "event" not in r and "reward/accuracy" in r]


def training(run: Path, tools: bool) -> str:
    """GRPO's sampled episodes (T = rollout.temperature): accuracy (and tool-call rate), first → last step."""
    st = steps(run)
    if not st:
        return "-"

    def one(r: dict) -> str:
        acc = f"{100 * r['reward/accuracy']:.0f}%"
        return f"{acc} / {100 * r.get('env/called_tool', 0):.0f}%" if tools else acc

    return f"{one(st[0])} → {one(st[-1])}"


def table(root: Path, task: str, base: dict | None = None) -> str:
    tools = task == "calculator"
    head = "accuracy / tool-call rate" if tools else "accuracy"
    out = [f"| {task} seed | base: {head} | after SFT | after SFT + GRPO | GRPO's samples, step 1 → last |",
           "|---|---|---|---|---|"]
    for run in sorted(p for p in root.glob(f"{task}_s*") if p.is_dir()):
        sft_first, sft_last = first_last(run / "sft")
        grpo_first, grpo_last = first_last(run / "grpo")
        if tools:  # the SFT run's evaluation is not an episode; GRPO's first one is "after SFT"
            b, mid = base, grpo_first
        else:  # the SFT run evaluates base and after SFT; GRPO's first evaluation is off
            b, mid = sft_first, sft_last
        out.append(f"| {run.name.split('_s')[-1]} | {cell(b, tools)} | {cell(mid, tools)} | {cell(grpo_last, tools)} "
                   f"| {training(run / 'grpo', tools)} |")
    return "\n".join(out)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/env_runs")
    base = next((e for run in sorted(root.glob("calculator_base*")) for e in evals(run) if e["step"] == 0), None)
    print(table(root, "calculator", base))
    print()
    print(table(root, "rg"))


if __name__ == "__main__":
    main()
