"""Per-rank memory of the actor at ZeRO-0, 2 and 3: SmolLM2-135M, 2 ranks on CPU, native dtype (a benchmark,
not a test).

    python scripts/bench/zero_memory.py                       # → table on stdout
    python scripts/bench/zero_memory.py --out bench/zero_memory.md --steps 2 --seq-len 64 --batch 4

For each configuration, 2 worker processes (gloo, one thread each) build the actor exactly as a run
does (``loops.setup.build_actor``) and take ``--steps`` optimizer steps on random token batches
(``--batch`` sequences of ``--seq-len`` tokens per rank, HF LM loss). Configurations:

- ``none``: rltrain's plain actor (``deepspeed=none``): bf16 module, fp32 masters and AdamW state
  on every rank, gradients all-reduced;
- ``zero0``: DeepSpeed stage 0 (bf16 optimizer, nothing partitioned);
- ``zero2``: optimizer state, fp32 masters and gradients partitioned over the ranks;
- ``zero3``: the bf16 parameters partitioned as well.

Reported per rank:
- ``state MB``: bytes of the tensors that persist between steps, counted once each: the module's
  parameters as held by this rank (its ZeRO-3 partition only), the fp32 masters and the AdamW
  moments. This is the number ZeRO divides.
- ``RSS build MB``: resident memory after building the actor (after ``malloc_trim``), minus the
  process's RSS before loading the model (Python, torch, DeepSpeed, transformers).
- ``peak MB``: the resident high-water mark over the measured steps (the first step, which
  allocates the optimizer state, is run before the mark is reset), minus the same baseline:
  state + gradients + activations + transient gathers.
- ``step s``: mean wall time of a measured step.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
CONFIGS = ["none", "zero0", "zero2", "zero3"]
MB = 1 << 20


def rss_bytes(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def trim() -> None:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def state_bytes(actor) -> int:
    """Bytes of persistent tensors held by this rank: module parameters (ZeRO-3: the partition),
    optimizer parameters (fp32 masters / partitions) and optimizer state, each storage once."""
    import torch

    seen: dict[int, int] = {}

    def add(t):
        if isinstance(t, torch.Tensor) and t.numel() > 0:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    module = actor.module
    for p in module.parameters():
        add(p.ds_tensor if hasattr(p, "ds_tensor") else p.data)
    inner = actor.optimizer if hasattr(actor, "optimizer") else actor.engine.optimizer.optimizer
    for group in inner.param_groups:
        for p in group["params"]:
            add(p.data)
    for state in inner.state.values():
        for v in state.values():
            add(v)
    return sum(seen.values())


def worker(name: str, rank: int, world: int, port: int, steps: int, batch: int, seq_len: int, dtype: str,
           out: str) -> None:
    import torch

    torch.set_num_threads(1)
    from rltrain.config import DeepSpeedConfig, GRPOConfig, ModelConfig, RunConfig
    from rltrain.engine.dist import init_dist
    from rltrain.loops import setup

    dist = init_dist(rank, world, master_addr="127.0.0.1", master_port=port, timeout_s=600)
    stage = {"none": 0, "zero0": 0, "zero2": 2, "zero3": 3}[name]
    cfg = RunConfig(algo=GRPOConfig(), model=ModelConfig(name="smollm2_135m", dtype=dtype),
                    deepspeed=DeepSpeedConfig(name=name, stage=stage))
    cfg.train.lr = 1e-5
    trim()
    baseline = rss_bytes()
    if name == "zero0":  # DeepSpeed's stage 0 (build_actor uses the plain actor for stage 0)
        from rltrain.engine.actor import OptimConfig
        from rltrain.engine.deepspeed import DeepSpeedActor

        model, _ = setup.load_policy_model(cfg)
        t = cfg.train
        optim = OptimConfig(lr=t.lr, weight_decay=t.weight_decay, betas=tuple(t.betas), warmup_steps=0,
                            schedule="constant", total_steps=steps + 1, max_grad_norm=t.max_grad_norm)
        actor = DeepSpeedActor(model, optim, cfg=cfg, dist=dist)
        del model
    else:
        actor, _ = setup.build_actor(cfg, dist, total_optimizer_steps=steps + 1)
    trim()
    after_build = rss_bytes()
    g = torch.Generator().manual_seed(rank)
    vocab = actor.module.config.vocab_size

    def step():
        ids = torch.randint(0, vocab, (batch, seq_len), generator=g)
        loss = actor.module(input_ids=ids, labels=ids).loss
        actor.backward(loss)
        actor.step()

    t_build = time.time()
    step()  # allocates the optimizer state
    print(f"[{name} rank {rank}] first step {time.time() - t_build:.1f} s", file=sys.stderr, flush=True)
    trim()
    reset_peak()
    t0 = time.time()
    for _ in range(steps):
        step()
    elapsed = (time.time() - t0) / steps
    row = {"config": name, "rank": rank, "state_mb": state_bytes(actor) / MB,
           "rss_build_mb": (after_build - baseline) / MB, "peak_mb": (rss_bytes("VmHWM") - baseline) / MB,
           "baseline_mb": baseline / MB, "step_s": elapsed}
    Path(out).write_text(json.dumps(row))
    dist.barrier()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(name: str, args, tmp: Path) -> list[dict]:
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    procs, outs = [], []
    for rank in range(args.ranks):
        out = tmp / f"{name}_{rank}.json"
        outs.append(out)
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE), "--worker", name, str(rank), str(args.ranks), str(port), str(args.steps),
             str(args.batch), str(args.seq_len), args.dtype, str(out)],
            env=dict(env, LOCAL_RANK=str(rank)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate()[0] for p in procs]
    for p, log in zip(procs, logs):
        if p.returncode != 0:
            raise RuntimeError(f"{name}: a worker failed:\n{log[-4000:]}")
    return [json.loads(o.read_text()) for o in outs]


def table(rows: list[dict]) -> str:
    lines = ["| config | rank | state MB | RSS build MB | peak MB | step s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['rank']} | {r['state_mb']:.0f} | {r['rss_build_mb']:.0f} | "
                     f"{r['peak_mb']:.0f} | {r['step_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        name, rank, world, port, steps, batch, seq_len, dtype, out = sys.argv[2:]
        worker(name, int(rank), int(world), int(port), int(steps), int(batch), int(seq_len), dtype, out)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1, help="measured optimizer steps (after one warm-up step)")
    parser.add_argument("--batch", type=int, default=2, help="sequences per rank per step")
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                        help="model.dtype (auto: fp32 on CPUs, bf16 on a bf16 GPU)")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    args = parser.parse_args()
    import tempfile

    from rltrain.engine.model import resolve_dtype

    args.dtype = resolve_dtype(args.dtype)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            t0 = time.time()
            rows += run_config(name, args, Path(tmp))
            print(f"{name}: done in {time.time() - t0:.0f} s", file=sys.stderr)
    text = (f"Per-rank memory, SmolLM2-135M {args.dtype}, {args.ranks} ranks on CPU, {args.batch}×{args.seq_len} tokens "
            f"per rank per step (baseline RSS before loading the model subtracted)\n\n" + table(rows))
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
