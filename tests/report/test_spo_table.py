"""scripts/repro/spo_table.py aggregates issue 17's runs per cell and difficulty over seeds."""
import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "repro" / "spo_table.py"


def _load():
    spec = importlib.util.spec_from_file_location("spo_table", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(root: Path, name: str, before: float, after: float | None, step_times: list[float]):
    d = root / name
    d.mkdir(parents=True)
    recs = [{"step": 0, "event": "eval", "accuracy": before}]
    recs += [{"step": i + 1, "time/step": t} for i, t in enumerate(step_times)]
    if after is not None:
        recs.append({"step": len(step_times), "event": "eval", "accuracy": after})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_cells_average_finished_seeds_only(tmp_path):
    mod = _load()
    _run(tmp_path, "E1_grpo_d1_s0", 0.10, 0.50, [30.0, 30.0])  # +40 in 60 s
    _run(tmp_path, "E1_grpo_d1_s1", 0.10, 0.30, [60.0, 60.0])  # +20 in 120 s
    _run(tmp_path, "E1_grpo_d1_s2", 0.10, None, [30.0])  # unfinished: left out
    _run(tmp_path, "E1_tree_d2_s0", 0.20, 0.25, [10.0])
    got = mod.cells(tmp_path)
    assert set(got) == {("E1_grpo", 1), ("E1_tree", 2)} and len(got[("E1_grpo", 1)]) == 2
    row = next(line for line in mod.table(tmp_path).splitlines() if line.startswith("| E1_grpo |"))
    # mean gain +30.0 over 90 s of training on average: +20.00 per minute
    assert row == "| E1_grpo | 1 | 2 | +30.0 (+20.0 – +40.0) | 2.0 | 90 s | +20.00 |"
