"""The code sandbox's numbers: benign throughput, the worst judging time we can construct within
the output cap, and the trainer's memory for a batch of programs at the output cap.

    python scripts/bench/sandbox_bench.py                 # all three, markdown on stdout
    python scripts/bench/sandbox_bench.py --only throughput --repeats 5

Needs root (namespace isolation). Take the numbers with nothing else running; the machine, its
load and the date are printed with them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
import tracemalloc

_MB = 2**20


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    return f"{model}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d')}"


def throughput(programs: int, tests: int, repeats: int) -> dict:
    from rltrain.rewards.code import bench

    rates = [bench(programs, tests)["programs_per_s"] for _ in range(repeats)]
    return {"programs_per_s_median": statistics.median(rates), "all": [round(r, 1) for r in rates]}


def worst_judging(cap_mb: float) -> list[tuple[str, float]]:
    """Seconds to judge each hostile output of ``cap_mb`` MiB (the most the sandbox reads back)."""
    from rltrain.rewards.code import extract_code
    from rltrain.rewards.code_compare import call_result_matches, stdout_matches

    n = int(cap_mb * _MB) - 16
    cases = {
        "one integer token, zeros then 'x'": lambda: stdout_matches(b"0" * n + b"x", "5"),
        "one integer token, leading zeros, right": lambda: stdout_matches(b"0" * n + b"5", "5"),
        "one decimal token, '1.' then zeros then '1'": lambda: stdout_matches(b"1." + b"0" * n + b"1", "1.0"),
        "digits, 'e+', digits, 'x'": lambda: stdout_matches(b"1" * (n // 2) + b"e+" + b"1" * (n // 2) + b"x", "1e5"),
        "a huge exponent": lambda: stdout_matches(b"1e" + b"9" * n, "1"),
        "many one-byte tokens vs 1,000 expected": lambda: stdout_matches(b"1 " * (n // 2), " ".join(["1"] * 1000)),
        "JSON [[],[],...] vs [1]": lambda: call_result_matches(b"[" + b"[]," * (n // 3) + b"[]]", [1]),
        "JSON nested 1M deep vs [[1]]": lambda: call_result_matches(b"[" * (n // 2) + b"]" * (n // 2), [[1]]),
        "fence without a newline (model output)": lambda: extract_code("```" + "a" * n),
        "many fences (model output)": lambda: extract_code("```" * (n // 3)),
    }
    out = []
    for name, case in cases.items():
        start = time.perf_counter()
        case()
        out.append((name, time.perf_counter() - start))
    return out


def batch_memory(batch: int, file_mb: int, workers: int | None) -> dict:
    """Trainer memory while a batch of programs each prints ``file_mb`` MiB of invalid UTF-8 and
    one 4-byte character (the old worst case: 4 bytes a character, held for the whole batch)."""
    from rltrain.rewards.code import CodeReward
    from rltrain.types import Sample

    reward = CodeReward(file_mb=file_mb, timeout=10.0, num_workers=workers)
    code = f"import sys\nsys.stdout.buffer.write(b'\\xff' * ({file_mb} * 2**20 - 8192) + '\\U0001F600'.encode())"
    sample = Sample(id="m", question="", meta={"input_output": {"inputs": [""], "outputs": ["x"]}})
    completion = f"```python\n{code}\n```"
    reward([sample], ["```python\nprint(1)\n```"])  # start the jail, pool and zygote first
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    start = time.perf_counter()
    out = reward([sample] * batch, [completion] * batch)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / _MB
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = reward.sandbox.num_workers
    reward.close()
    assert out.info["failed"] == [False] * batch, out.info["error"]
    return {"batch": batch, "file_mb": file_mb, "workers": workers, "seconds": round(seconds, 2),
            "python_peak_mib": round(peak, 1), "max_rss_growth_mib": round(rss_after - rss_before, 1),
            "bound_mib": 2 * file_mb * workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["throughput", "judging", "memory"])
    parser.add_argument("--programs", type=int, default=50)
    parser.add_argument("--tests", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cap-mb", type=float, default=16.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    if args.only in (None, "throughput"):
        result = throughput(args.programs, args.tests, args.repeats)
        print(f"benign throughput ({args.programs} correct programs x {args.tests} tests): "
              f"{result['programs_per_s_median']:.1f} programs/s (median of {result['all']})\n")
    if args.only in (None, "judging"):
        rows = worst_judging(args.cap_mb)
        print(f"judging one hostile output of {args.cap_mb:g} MiB\n\n| output | seconds |\n|---|---|")
        for name, seconds in rows:
            print(f"| {name} | {seconds:.3f} |")
        print(f"\nworst: {max(s for _, s in rows):.3f} s\n")
    if args.only in (None, "memory"):
        print("trainer memory for a batch at the output cap:", json.dumps(batch_memory(args.batch, 16, args.workers)))


if __name__ == "__main__":
    main()
