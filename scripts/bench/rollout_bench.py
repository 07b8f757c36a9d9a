"""Rollout throughput: rltrain's engine vs ``transformers`` ``model.generate`` on the same batch.

Default workload = one GRPO rollout of the embedded default job: SmolLM2-135M-Instruct, 8 chat
prompts × 8 samples, 64 new tokens, T = 1.0 (no top-k/top-p). Two settings:
- ``fixed``: no early stop (EOS ignored by both), so both produce exactly 64 × 64 tokens;
- ``eos``: stop at EOS, tokens/s counts the tokens actually produced (EOS included).
HF gets the prompts repeated n times in one left-padded batch (what TRL's GRPO trainer does),
``top_k=0`` (its default is 50) and a generation config with no EOS in the ``fixed`` setting.

Each measurement alternates engines ``--repeats`` times after a warm-up and reports the median
tokens/s by wall-clock time and by process CPU time. Timings on a shared 2-core machine are noisy:
compare ratios taken in the same run, and on a loaded machine prefer ``--threads 1`` and the CPU
time (an OpenMP team of 2 threads on an oversubscribed machine mostly waits).

    python scripts/bench/rollout_bench.py                      # both settings, model dtype auto
    python scripts/bench/rollout_bench.py --dtype fp32 --profile
    python scripts/bench/rollout_bench.py --tree 4,4 --segment-len 16   # SPO tree vs independent paths
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rltrain.rollout import SamplingParams, generate  # noqa: E402

QUESTIONS = [
    "What is 17 + 25?", "What is 48 + 39?", "Compute 63 + 18.", "What is 91 + 7?",
    "Add 34 and 56.", "What is 72 + 29?", "Compute 15 + 86.", "What is 44 + 44?",
    "What is 23 + 68?", "Add 57 and 35.", "What is 81 + 12?", "Compute 26 + 49.",
]


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def load(dtype: str):
    from rltrain.engine.model import eos_token_ids, load_model

    model, tok = load_model("smollm2_135m", dtype=dtype)
    return model.eval(), tok, eos_token_ids(model, tok)


def build_prompts(tok, n_prompts: int) -> list[list[int]]:
    out = []
    for q in (QUESTIONS * 4)[:n_prompts]:
        msgs = [{"role": "user", "content": q + " Answer with the number only."}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        out.append(list(ids))
    return out


def matmul_gflops(dtype: torch.dtype, m: int = 64) -> float:
    """Throughput of one decode-shaped GEMM (a SmolLM2 MLP projection at batch m)."""
    a, w = torch.randn(m, 576, dtype=dtype), torch.randn(1536, 576, dtype=dtype)
    for _ in range(3):
        torch.nn.functional.linear(a, w)
    n, t0 = 30, time.perf_counter()
    for _ in range(n):
        torch.nn.functional.linear(a, w)
    return 2 * m * 576 * 1536 * n / (time.perf_counter() - t0) / 1e9


class Clock:
    """Wall-clock and process CPU seconds of a block. On a shared machine the CPU time of a
    1-thread run is the steadier number (it excludes time spent waiting for a core)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_ours(model, prompts, n, max_new, eos, seed, stats=None, kv_cache="static"):
    params = SamplingParams(max_new_tokens=max_new, temperature=1.0, n=n)
    with Clock() as c:
        r = generate(model, prompts, params, eos_token_ids=eos, pad_token_id=0,
                     generator=torch.Generator().manual_seed(seed), stats=stats, kv_cache=kv_cache)
    return int(r.lengths.sum()), c


def run_hf(model, prompts, n, max_new, eos, pad_id, seed):
    from transformers import GenerationConfig

    rows = [p for p in prompts for _ in range(n)]
    width = max(len(p) for p in rows)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in rows])
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
    gen = GenerationConfig(max_new_tokens=max_new, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                           eos_token_id=eos if eos else None, pad_token_id=pad_id)
    torch.manual_seed(seed)
    with Clock() as c, torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=attn, generation_config=gen)
    resp = out[:, width:]
    if eos:
        is_eos = torch.isin(resp, torch.tensor(eos))
        # tokens up to and including the first EOS (HF pads after it)
        first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, torch.full((len(rows),), resp.shape[1]))
        tokens = int(first.sum())
    else:
        tokens = resp.numel()
    return tokens, c


def bench_generate(model, tok, eos, args):
    prompts = build_prompts(tok, args.prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    print(f"prompt lengths: {sorted(len(p) for p in prompts)}; batch {args.prompts}x{args.n}, "
          f"{args.max_new_tokens} new tokens, T=1.0")
    run_ours(model, prompts[:2], 2, 4, [], 0)  # warm-up
    run_hf(model, prompts[:2], 2, 4, [], pad, 0)
    for setting, stop in (("fixed", []), ("eos", eos)):
        if args.setting not in ("both", setting):
            continue
        rates = {"ours": [], "hf": []}  # (tok/s wall, tok/s CPU) per run
        for rep in range(args.repeats):
            stats: dict[str, float] = {}
            tk, c = run_ours(model, prompts, args.n, args.max_new_tokens, stop, rep, stats, args.kv_cache)
            rates["ours"].append((tk / c.wall, tk / c.cpu))
            if args.profile:
                print(f"  ours[{setting}] rep {rep}: {tk} tok, {c.wall:.1f}s wall, {c.cpu:.1f}s CPU; phases (wall): "
                      + ", ".join(f"{k} {v:.2f}s" for k, v in sorted(stats.items(), key=lambda kv: -kv[1])))
            if not args.skip_hf:
                tk, c = run_hf(model, prompts, args.n, args.max_new_tokens, stop, pad, rep)
                rates["hf"].append((tk / c.wall, tk / c.cpu))
                if args.profile:
                    print(f"  hf  [{setting}] rep {rep}: {tk} tok, {c.wall:.1f}s wall, {c.cpu:.1f}s CPU")
        for kind, idx in (("wall", 0), ("CPU ", 1)):
            o = statistics.median(r[idx] for r in rates["ours"])
            line = f"[{setting:5s}] tok/s by {kind} time: ours {o:7.1f}"
            if rates["hf"]:
                h = statistics.median(r[idx] for r in rates["hf"])
                line += f" | HF generate {h:7.1f} | ratio {o / h:4.2f}x"
            print(line)


def bench_tree(model, tok, eos, args):
    from rltrain.rollout.tree import independent_paths, leaf_paths, sample_tree

    prompts = build_prompts(tok, args.prompts)
    branching = [int(b) for b in args.tree.split(",")]
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0)
    stop = [] if args.setting == "fixed" else eos
    print(f"tree {branching}, segment {args.segment_len}, max {args.max_new_tokens} tokens, "
          f"{args.prompts} prompts, stop at EOS: {bool(stop)}")
    tree_rates, path_rates, speedups = [], [], []
    for rep in range(args.repeats):
        with Clock() as c:
            trees = sample_tree(model, prompts, branching, args.segment_len, args.max_new_tokens, params,
                                eos_token_ids=stop, pad_token_id=0, generator=torch.Generator().manual_seed(rep))
        el = c.cpu if args.cpu_time else c.wall
        new_tokens = sum(sum(len(s) for s in t.token_ids) for t in trees)
        tree_rates.append(new_tokens / el)
        # The same root-to-leaf paths (one per leaf), sampled as independent sequences in one
        # batch: each path re-generates the prefix it shares with its siblings.
        paths = [p for i, t in enumerate(trees) for p in leaf_paths(t, i, len(branching))]
        with Clock() as c:
            out = independent_paths(model, prompts, branching, args.segment_len, args.max_new_tokens, params,
                                    eos_token_ids=stop, pad_token_id=0, generator=torch.Generator().manual_seed(rep),
                                    paths=paths)
        el_p = c.cpu if args.cpu_time else c.wall
        path_tokens = sum(len(p) for p in out)
        same = sum(o == t.response_ids(leaf) for o, (t, leaf) in
                   zip(out, [(t, leaf) for t in trees for leaf in t.leaves()]))
        path_rates.append(path_tokens / el_p)
        speedups.append(el_p / el)
        unit = "s CPU" if args.cpu_time else "s"
        print(f"  rep {rep}: tree {new_tokens} distinct new tokens, {len(paths)} leaves in {el:.2f}{unit}; "
              f"independent paths {path_tokens} tokens in {el_p:.2f}{unit} ({same}/{len(paths)} identical); "
              f"speed-up {el_p / el:.2f}x")
    print(f"[tree ] tree {statistics.median(tree_rates):.1f} distinct tok/s | independent paths "
          f"{statistics.median(path_rates):.1f} tok/s | same leaves {statistics.median(speedups):.2f}x faster")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                    help="model weights; auto = bf16 where the CPU has avx512_bf16/amx, else fp32")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--setting", default="both", choices=["both", "fixed", "eos"])
    ap.add_argument("--kv-cache", default="static", choices=["static", "dynamic"])
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--profile", action="store_true", help="print per-run times and our per-phase split")
    ap.add_argument("--tree", default="", help="branching factors, e.g. 4,4: benchmark SPO tree sampling")
    ap.add_argument("--segment-len", type=int, default=16)
    ap.add_argument("--cpu-time", action="store_true", help="tree: rates by process CPU time instead of wall time")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if cpu_has_bf16() else "fp32")
    tdt = torch.bfloat16 if dtype == "bf16" else torch.float32
    print(f"torch {torch.__version__}, {args.threads} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, avx512_bf16: {cpu_has_bf16()}, weights {dtype}")
    gflops = matmul_gflops(tdt)
    print(f"decode-shaped GEMM: {gflops:.0f} GFLOP/s ({dtype}) -> compute bound "
          f"~{gflops * 1e9 / (2 * 134.5e6):.0f} tok/s for SmolLM2-135M")
    t0 = time.perf_counter()
    model, tok, eos = load(dtype)
    print(f"model loaded in {time.perf_counter() - t0:.1f}s; eos ids {eos}")
    if args.tree:
        bench_tree(model, tok, eos, args)
    else:
        bench_generate(model, tok, eos, args)


if __name__ == "__main__":
    main()
