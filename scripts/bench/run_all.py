"""``make bench``: rltrain against TRL on the same machine, model, prompts and batch settings.

    python scripts/bench/run_all.py                 # smollm2_135m and tiny, GRPO and DPO → bench/results.md
    python scripts/bench/run_all.py --quick         # smoke run on model=tiny, a few steps (not a benchmark)
    python scripts/bench/run_all.py --models tiny --algos grpo --steps 3 --out /tmp/b/results.md
    python scripts/bench/run_all.py --set grpo.max_new_tokens=128 --set dpo.pairs_per_step=32

Every run is its own child process, one at a time: rltrain through its real CLI (``python -m
rltrain.cli ...``), TRL through ``trl_worker.py`` (GRPOTrainer / DPOTrainer). Peak memory is the
child's resident-set high-water mark (``ru_maxrss`` from ``os.wait4``; it covers the child and the
reward worker processes it waited for, whichever peaked highest). Both get the same thread count
(``OMP_NUM_THREADS`` and ``torch.set_num_threads``).

Reported per run: mean wall time of a step (a step = one rollout batch of prompts × samples and its
optimizer steps for GRPO, one optimizer step over ``pairs_per_step`` pairs for DPO), the first step
apart (warm-up: allocator, lazy init), generated tokens per second over whole steps (end to end)
and over generation alone, peak RSS, process wall time; then the ratios rltrain / TRL.
How the settings map onto each framework: bench_settings.py.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from bench_settings import RLTRAIN_COMMON, DPOSettings, GRPOSettings, as_dict  # noqa: E402


@dataclass
class Result:
    """One framework × algorithm × model run."""

    framework: str
    algo: str
    model: str
    cmd: list[str]
    rc: int = 0
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    step_times: list[float] = field(default_factory=list)
    gen_tokens: list[float] = field(default_factory=list)
    generate_s: float | None = None
    items_per_step: int = 0
    log: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and bool(self.step_times)

    @property
    def steady(self) -> list[float]:
        """Step times without the first (warm-up) step, when there is more than one."""
        return self.step_times[1:] if len(self.step_times) > 1 else self.step_times

    @property
    def step_time(self) -> float | None:
        return sum(self.steady) / len(self.steady) if self.steady else None

    @property
    def tokens_per_s(self) -> float | None:
        """Generated tokens / step wall time over the steady steps (GRPO)."""
        k = len(self.step_times) - len(self.steady)
        toks = self.gen_tokens[k:]
        if not toks or len(toks) != len(self.steady):
            return None
        return sum(toks) / sum(self.steady)

    @property
    def rollout_tokens_per_s(self) -> float | None:
        """Generated tokens / time inside generation, over all steps."""
        if not self.generate_s or not self.gen_tokens:
            return None
        return sum(self.gen_tokens) / self.generate_s

    @property
    def items_per_s(self) -> float | None:
        return self.items_per_step / self.step_time if self.step_time else None


# --------------------------------------------------------------------------- running children



def _portable(text: str) -> str:
    """A command as anyone can rerun it from the repository root (no paths of this machine)."""
    return text.replace(sys.executable, "python").replace(str(REPO) + os.sep, "")

def child_env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def run_child(cmd: list[str], env: dict, log_path: Path, timeout_s: float) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS in MB) of one child process; killed after ``timeout_s``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        killer = threading.Timer(timeout_s, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.time() - t0, usage.ru_maxrss / 1024.0  # Linux: KiB


def tail(path: Path, n: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def rltrain_run(algo: str, s, work: Path, timeout_s: float) -> Result:
    run_dir = work / f"rltrain-{algo}-{s.model}"
    cmd = [sys.executable, "-m", "rltrain.cli", *s.rltrain(), *RLTRAIN_COMMON, "resume=never",
           f"hydra.run.dir={run_dir}"]
    r = Result("rltrain", algo, s.model, cmd, log=str(run_dir) + ".log")
    r.rc, r.wall_s, r.peak_rss_mb = run_child(cmd, child_env(s.threads), Path(r.log), timeout_s)
    rows = []
    if (run_dir / "metrics.jsonl").exists():
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [row for row in rows if "event" not in row]
    r.step_times = [row["time/step"] for row in steps if "time/step" in row]
    if algo == "grpo":
        r.items_per_step = s.sequences
        r.gen_tokens = [row["response/length_mean"] * s.sequences for row in steps if "response/length_mean" in row]
        r.generate_s = sum(row.get("time/rollout", 0.0) for row in steps) or None
    else:
        r.items_per_step = s.pairs_per_step
    if r.rc != 0:
        r.error = tail(Path(r.log))
    return r


def trl_run(algo: str, s, work: Path, timeout_s: float) -> Result:
    out_json = work / f"trl-{algo}-{s.model}.json"
    out_json.unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE / "trl_worker.py"), algo, json.dumps(as_dict(s)), "--json", str(out_json),
           "--output-dir", str(work / f"trl-{algo}-{s.model}")]
    r = Result("trl", algo, s.model, cmd, log=str(work / f"trl-{algo}-{s.model}.log"))
    r.rc, r.wall_s, r.peak_rss_mb = run_child(cmd, child_env(s.threads), Path(r.log), timeout_s)
    if r.rc != 0 or not out_json.exists():
        r.error = tail(Path(r.log))
        r.rc = r.rc or 1
        return r
    got = json.loads(out_json.read_text())
    if algo == "grpo":
        # TRL's steps are optimizer steps; a benchmark step is one generation batch and its
        # minibatches_per_step optimizer steps.
        M = s.minibatches_per_step
        t = got["step_times"]
        r.step_times = [sum(t[i:i + M]) for i in range(0, len(t) - M + 1, M)]
        r.gen_tokens = [float(x) for x in got["gen_tokens"]][: len(r.step_times)]
        r.generate_s = got["generate_s"]
        r.items_per_step = s.sequences
    else:
        r.step_times = got["step_times"]
        r.items_per_step = s.pairs_per_step
    return r


# --------------------------------------------------------------------------- report


def machine() -> dict:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in text)
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f"{kb / 1024 ** 2:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)), "flags": flags,
            "memory": mem, "os": platform.platform(), "python": platform.python_version()}


def versions() -> dict:
    out = {}
    for pkg in ("rltrain", "torch", "transformers", "trl", "accelerate", "datasets"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    head = REPO / ".git" / "HEAD"
    if head.exists():  # the commit benchmarked, read from the files (no git process)
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            p = REPO / ".git" / ref[5:]
            ref = p.read_text().strip() if p.exists() else ref
        out["rltrain commit"] = ref[:12]
    return out


def _f(v, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def _ratio(a, b, fmt="{:.2f}×") -> str:
    return "-" if a is None or b is None or b == 0 else fmt.format(a / b)


def results_markdown(results: list[Result], settings: dict, info: dict, *, smoke: bool, busy: str) -> str:
    lines = []
    if smoke:
        lines += ["# SMOKE RUN: not a benchmark", "",
                  "**`--quick` run on the tiny random model with a few steps: it checks that the harness works. "
                  "Do not quote or commit these numbers.**", ""]
    else:
        lines += ["# rltrain vs TRL: benchmark results", ""]
    if busy:
        lines += [f"**Warning: {busy}. Timings from a loaded machine are not valid results.**", ""]
    m, v = info["machine"], info["versions"]
    lines += ["## Machine and versions", "",
              f"- CPU: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
              f"{m['flags'] or 'no avx flags read'}; "
              f"memory {m['memory']}; {m['os']}; Python {m['python']}",
              f"- load average before / after: {info['load_before']} / {info['load_after']}",
              "- " + ", ".join(f"{k} {val}" for k, val in v.items()),
              f"- date: {info['date']}; total harness time {info['total_s']:.0f} s", "",
              "## Settings (identical for both frameworks)", ""]
    for algo, s in settings.items():
        lines.append(f"- {algo}: " + ", ".join(f"{k}={val}" for k, val in s.items() if k != "model"))
    lines += ["",
              "Both: AdamW β=(0.9, 0.999), no weight decay, constant LR, no warm-up, grad-norm clip 1.0, fp32 master "
              "weights; compute in the `dtype` above (bf16: rltrain `model.dtype=bf16`, TRL `bf16=True`, i.e. "
              "autocast; fp32 where the CPU has no native bf16, as PyTorch emulates it there), no gradient "
              "checkpointing (TRL's default is on), the same model weights, chat-templated prompt text and "
              "`MathReward`; each framework draws prompts in its own seeded order from the same arith training set. "
              "GRPO: β=0 (no reference model), clip ε=0.2, "
              "token-mean loss (TRL `loss_type=dapo`), group-std advantages, temperature 1.0, no top-p/top-k. "
              "DPO: sigmoid loss, reference log-probs precomputed once for the pairs the run uses "
              "(rltrain `algo.cache_ref_logps=true`, TRL `precompute_ref_log_probs=true`); TRL appends an EOS to "
              "responses that do not end with one.", "",
              "## Results", "",
              "Step time: mean wall time per step, first (warm-up) step excluded. GRPO step = one rollout batch "
              "(prompts × samples) and its optimizer step(s); DPO step = one optimizer step over pairs_per_step "
              "pairs. Tokens/s: generated tokens / step time (end to end) and / time inside generation. "
              "Peak RSS: the process's resident-set high-water mark. Wall: the whole process, model load included.", "",
              "| algo | model | framework | steps | step time (s) | first step (s) | gen tok/s (end to end) "
              "| gen tok/s (generation) | seq or pairs / s | peak RSS (MB) | wall (s) | status |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        status = "ok" if r.ok else f"failed (rc {r.rc})"
        lines.append(f"| {r.algo} | {r.model} | {r.framework} | {len(r.step_times)} | {_f(r.step_time, '{:.2f}')} | "
                     f"{_f(r.step_times[0] if r.step_times else None, '{:.2f}')} | {_f(r.tokens_per_s, '{:.0f}')} | "
                     f"{_f(r.rollout_tokens_per_s, '{:.0f}')} | {_f(r.items_per_s, '{:.2f}')} | "
                     f"{r.peak_rss_mb:.0f} | {r.wall_s:.0f} | {status} |")
    lines += ["", "### rltrain / TRL", "",
              "Below 1 is better for step time and memory; above 1 is better for throughput.", "",
              "| algo | model | step time | gen tok/s (end to end) | seq or pairs / s | peak RSS |",
              "|---|---|---:|---:|---:|---:|"]
    by = {(r.algo, r.model, r.framework): r for r in results}
    for (algo, model, fw), r in by.items():
        t = by.get((algo, model, "trl"))
        if fw != "rltrain" or t is None:
            continue
        lines.append(f"| {algo} | {model} | {_ratio(r.step_time, t.step_time)} | "
                     f"{_ratio(r.tokens_per_s, t.tokens_per_s)} | {_ratio(r.items_per_s, t.items_per_s)} | "
                     f"{_ratio(r.peak_rss_mb, t.peak_rss_mb)} |")
    lines += ["", "## Commands", "", f"Harness: `{info['argv']}`", ""]
    for r in results:
        lines += [f"- {r.framework} {r.algo} {r.model}:", "", "  ```", "  " + _portable(shlex.join(r.cmd)), "  ```", ""]
    failed = [r for r in results if not r.ok]
    if failed:
        lines += ["## Failures", ""]
        for r in failed:
            lines += [f"### {r.framework} {r.algo} {r.model} (log: `{r.log}`)", "",
                      "```", r.error or "(no output)", "```", ""]
    return "\n".join(lines) + "\n"


def busy_note(load: float, cores: int) -> str:
    return f"load average {load:.1f} on {cores} cores at start" if load > 0.5 * cores else ""


# --------------------------------------------------------------------------- main


def apply_overrides(s, algo: str, overrides: list[str]) -> None:
    """``--set grpo.max_new_tokens=128``: change one field of one algorithm's settings."""
    for item in overrides:
        key, sep, value = item.partition("=")
        which, _, name = key.partition(".")
        if not sep or which not in ("grpo", "dpo") or not name:
            raise SystemExit(f"--set expects grpo.FIELD=VALUE or dpo.FIELD=VALUE, got {item!r}")
        if which != algo:
            continue
        if name not in as_dict(s) or name == "model":
            valid = ", ".join(k for k in as_dict(s) if k != "model")
            raise SystemExit(f"--set {key}: no such field; {which} fields: {valid}")
        setattr(s, name, type(getattr(s, name))(value))


def build_settings(args) -> tuple[list[tuple[str, object]], dict]:
    runs, shown = [], {}
    for model in args.models:
        for algo in args.algos:
            if algo == "grpo":
                s = GRPOSettings(model=model, threads=args.threads)
                if args.quick:
                    s.steps, s.prompts_per_step, s.samples_per_prompt, s.max_new_tokens = 3, 2, 4, 8
                    s.micro_batch_size, s.n_train = 8, 64
            else:
                s = DPOSettings(model=model, threads=args.threads)
                if args.quick:
                    s.steps, s.pairs_per_step, s.micro_batch_size = 3, 4, 4
            if args.steps:
                s.steps = args.steps
            apply_overrides(s, algo, args.set)
            s.check()
            runs.append((algo, s))
            shown[f"{algo} ({model})"] = as_dict(s)
    return runs, shown


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: model=tiny, tiny batches, 3 steps")
    p.add_argument("--models", default=None, help="comma-separated: smollm2_135m,tiny (quick: tiny)")
    p.add_argument("--algos", default="grpo,dpo", help="comma-separated: grpo,dpo")
    p.add_argument("--frameworks", default="rltrain,trl", help="comma-separated: rltrain,trl")
    p.add_argument("--steps", type=int, default=None, help="override the steps of every run")
    p.add_argument("--set", action="append", default=[], metavar="ALGO.FIELD=VALUE",
                   help="change a setting for both frameworks, e.g. grpo.max_new_tokens=128 (repeatable)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads for both frameworks")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before a run is killed")
    p.add_argument("--work", type=Path, default=None, help="run directories and logs (default outputs/bench[-smoke])")
    p.add_argument("--out", type=Path, default=None,
                   help="results markdown (default bench/results.md; quick: outputs/bench-smoke/results.md)")
    args = p.parse_args(argv)
    args.models = (args.models or ("tiny" if args.quick else "smollm2_135m,tiny")).split(",")
    args.algos = args.algos.split(",")
    frameworks = args.frameworks.split(",")
    for bad in set(args.algos) - {"grpo", "dpo"}:
        raise SystemExit(f"--algos: unknown {bad!r}; valid: grpo, dpo")
    for bad in set(frameworks) - {"rltrain", "trl"}:
        raise SystemExit(f"--frameworks: unknown {bad!r}; valid: rltrain, trl")
    work = args.work or REPO / "outputs" / ("bench-smoke" if args.quick else "bench")
    out = args.out or (work / "results.md" if args.quick else REPO / "bench" / "results.md")
    work.mkdir(parents=True, exist_ok=True)
    runs, shown = build_settings(args)

    t0, load0 = time.time(), os.getloadavg()[0]
    results = []
    for algo, s in runs:
        for fw in frameworks:
            print(f"[bench] {fw} {algo} model={s.model} ...", flush=True)
            r = (rltrain_run if fw == "rltrain" else trl_run)(algo, s, work, args.timeout)
            print(f"[bench]   {'ok' if r.ok else 'FAILED'}: step {_f(r.step_time, '{:.2f}')} s, "
                  f"peak RSS {r.peak_rss_mb:.0f} MB, wall {r.wall_s:.0f} s (log {r.log})", flush=True)
            results.append(r)
    info = {"machine": machine(), "versions": versions(), "load_before": f"{load0:.1f}",
            "load_after": f"{os.getloadavg()[0]:.1f}", "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "total_s": time.time() - t0, "argv": shlex.join(["python", "scripts/bench/run_all.py",
                                                             *(sys.argv[1:] if argv is None else argv)])}
    text = results_markdown(results, shown, info, smoke=args.quick,
                            busy=busy_note(load0, info["machine"]["usable_cores"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    (out.with_suffix(".json")).write_text(_portable(json.dumps({"info": info, "settings": shown, "results": [
        {**r.__dict__, "step_time": r.step_time, "tokens_per_s": r.tokens_per_s,
         "rollout_tokens_per_s": r.rollout_tokens_per_s, "items_per_s": r.items_per_s} for r in results]},
        indent=1, default=str)))
    print(text)
    print(f"[bench] wrote {out}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
