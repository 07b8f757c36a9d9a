"""The embedded default run (GRPO, SmolLM2-135M-Instruct, two-digit addition) with each rollout engine,
the same seed: held-out accuracy before/after, rollout tokens/s, weight-sync time, whole-run time
(docs/vllm.md). Run it with the Python that has vLLM, so both engines run on the same packages:

    .venv-vllm/bin/python scripts/bench/vllm_bench.py                 # both engines, seed 0
    .venv-vllm/bin/python scripts/bench/vllm_bench.py --seed 1 ARGS... # extra overrides for both runs

Each run is the real command in a subprocess (``python -m rltrain.cli``) with its own run directory under
--out. Rollout tokens/s is the step's generated tokens over its rollout time, averaged over the steps after
the first (the first carries warm-up: vLLM's first batch, the allocator); training s is the sum of the steps'
times; the wall time adds start-up (vLLM's engine start) and both evaluations, the first of which the second
run usually reads from the evaluation cache (marked). The machine is shared: the load average is
printed before and after, and a ratio from one invocation is worth more than a single number.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def run(engine: str, seed: int, out: Path, extra: list[str]) -> dict:
    run_dir = out / f"{engine}_seed{seed}"
    cmd = [sys.executable, "-m", "rltrain.cli", f"seed={seed}", f"rollout.engine={engine}", "log.console=false",
           *extra, f"hydra.run.dir={run_dir}"]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        sys.exit(f"{engine} run failed ({r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in rows if "event" not in x]
    evals = [x for x in rows if x.get("event") == "eval"]
    later = steps[1:] or steps
    mean = lambda key, rs: sum(x[key] for x in rs) / len(rs)  # noqa: E731
    return {
        "engine": engine, "wall_s": wall, "acc_before": evals[0]["accuracy"], "acc_after": evals[-1]["accuracy"],
        "tok_s": mean("perf/tokens_per_s", later), "tok_s_first": steps[0]["perf/tokens_per_s"],
        "rollout_s": mean("time/rollout", steps), "step_s": mean("time/step", steps),
        "train_s": sum(x["time/step"] for x in steps), "eval_cached": bool(evals[0].get("cached")),
        "sync_s": mean("time/weight_sync", steps) if "time/weight_sync" in steps[0] else None,
        "dlogp": mean("mismatch/abs_dlogp_mean", steps), "reward": mean("reward/mean", steps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "vllm_bench")
    ap.add_argument("--engines", default="rltrain,vllm")
    ap.add_argument("overrides", nargs="*", help="extra rltrain overrides for every run")
    args = ap.parse_args()
    print(f"# {cpu_name()}, {os.cpu_count()} cores; {load()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    results = []
    for engine in args.engines.split(","):
        results.append(run(engine, args.seed, args.out, args.overrides))
        print(f"# after {engine}: {load()}", flush=True)
    print("\n| engine | held-out before → after | rollout tok/s (steps 2+; step 1) | rollout s/step | "
          "weight sync s/step | step s | training s (steps) | mean abs Δlogp | whole run s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        sync = "-" if r["sync_s"] is None else f"{r['sync_s']:.2f}"
        print(f"| {r['engine']} | {100 * r['acc_before']:.1f}% → {100 * r['acc_after']:.1f}% | {r['tok_s']:.0f}; "
              f"{r['tok_s_first']:.0f} | {r['rollout_s']:.1f} | {sync} | {r['step_s']:.1f} | {r['train_s']:.0f} | "
              f"{r['dlogp']:.1e} | {r['wall_s']:.0f}{' (initial eval cached)' if r['eval_cached'] else ''} |")


if __name__ == "__main__":
    main()
