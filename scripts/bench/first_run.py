"""The first run a user sees, timed (docs/results.md, "The first run" and "Sharing the CPU").

Prints, for this machine:
1. the whole embedded default (`rltrain`, no overrides) from an empty cache (`RLTRAIN_CACHE` a new
   directory, so the SmolLM2 GGUF conversion, the dtype probe and the base evaluation all run),
   with its phases;
2. the same command again on that cache (the base evaluation cached);
3. the default's step time quiet and with one busy competitor (`python -c "while True: pass"`)
   for each wait policy asked for: the default (`passive`: threads sleep when they wait), `before`
   (libgomp's own default, which rltrain ran with until it set PASSIVE: spin a while, then sleep) and
   `active` (spin). Each of these runs
   `--steps` steps of the default without evaluations; the first step is left out of the mean.

A benchmark, not a test: run it with nothing else on the machine (it prints the load). Usage:
    python scripts/bench/first_run.py [--skip-whole] [--steps 3] [--modes passive before active]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODES = {
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, []),
    # An invalid value makes libgomp keep its default (spin a while, then sleep: what rltrain ran
    # with before it set PASSIVE); libgomp says so once on stderr.
    "before": ({"OMP_WAIT_POLICY": "libgomp-default"}, []),
    "active": ({"OMP_WAIT_POLICY": "ACTIVE"}, []),
}


def cpu() -> str:
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        have = set(next(line for line in info.splitlines() if line.startswith("flags")).split())
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have)
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{model} ({flags}), {len(os.sched_getaffinity(0))} cores"


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def run(args: list[str], env: dict, out: Path) -> tuple[float, list[dict]]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "rltrain.cli", *args, f"hydra.run.dir={out}", "log.console=false"],
                       cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"rltrain failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return wall, rows


def phases(wall: float, rows: list[dict]) -> dict[str, float]:
    steps = [r for r in rows if "time/step" in r and "event" not in r]
    evals = [r for r in rows if r.get("event") == "eval"]
    split = {"whole run": wall}
    if evals:
        # a cached base evaluation (eval.cache_base) logs the time it took when it was computed: not spent here
        first = evals[0]
        split["evaluation before"] = first.get("time_s", 0.0) if first["step"] == 0 and not first.get("cached") else 0.0
        split["evaluation after"] = evals[-1].get("time_s", 0.0) if evals[-1]["step"] > 0 else 0.0
    for key in ("time/rollout", "time/update", "time/reward", "time/step"):
        split[f"{len(steps)} steps: {key[5:]}"] = sum(r.get(key, 0.0) for r in steps)
    split["start-up, conversion, checkpoint, summary"] = wall - split.get("evaluation before", 0) - split.get(
        "evaluation after", 0) - split[f"{len(steps)} steps: step"]
    return split


def step_times(rows: list[dict]) -> list[float]:
    return [r["time/step"] for r in rows if "time/step" in r and "event" not in r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-whole", action="store_true", help="only the quiet-vs-competitor step times")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["passive", "before"], choices=list(MODES))
    a = ap.parse_args()
    print(f"machine: {cpu()}; python {platform.python_version()}; {load()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="rltrain-first-run-"))
    base_env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    try:
        cache = work / "cache"
        env = dict(base_env, RLTRAIN_CACHE=str(cache))
        if not a.skip_whole:
            for name in ("empty cache", "cached"):
                print(f"\n== the embedded default, {name} ({load()})", flush=True)
                wall, rows = run([], env, work / name.replace(" ", "_"))
                ev = [r for r in rows if r.get("event") == "eval"]
                print(f"   held-out accuracy {ev[0]['accuracy']:.1%} -> {ev[-1]['accuracy']:.1%}")
                for k, v in phases(wall, rows).items():
                    print(f"   {k:45s} {v:7.1f} s")
        quick = [f"train.steps={a.steps}", "eval.at_start=false", "eval.size=8", "checkpoint.save_final=false"]
        print(f"\n== step time of the default, quiet vs. one busy competitor (steps 2..{a.steps}; {load()})")
        for mode in a.modes:
            extra_env, extra_args = MODES[mode]
            result = {}
            for competitor in (False, True):
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if competitor else None
                try:
                    _, rows = run(quick + extra_args, dict(env, **extra_env), work / f"{mode}_{competitor}")
                finally:
                    if hog:
                        hog.kill()
                        hog.wait()
                t = step_times(rows)[1:]
                result[competitor] = sum(t) / len(t)
                print(f"   {mode:8s} {'busy competitor' if competitor else 'quiet':15s} "
                      f"{result[competitor]:6.1f} s/step  {[round(x, 1) for x in t]}  ({load()})", flush=True)
            print(f"   {mode:8s} ratio {result[True] / result[False]:.2f}x", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
