"""GPU smoke test (issue 14): bf16 GRPO/PPO steps, 1-rank nccl ZeRO-2/3, rollout tokens/s at batch 64
against the HBM bandwidth bound, bf16-vs-fp32 log-prob mismatch; one summary table; exit 1 on any error.
The vLLM engine (issue 27, docs/vllm.md), run by ``.venv-vllm``'s Python (``$VLLM_PYTHON``; ``make vllm``
installs ``vllm`` where ``nvidia-smi`` is found): the colocated engine in bf16 beside the trainer, its
log-probs against the trainer's before and after a weight push (scripts/gpu/vllm_smoke.py), and a 2-step
GRPO run with ``rollout.engine=vllm``. ``--no-vllm`` leaves them out; without vLLM they fail, naming why.

No network: model=tiny and a ~100M-parameter random Llama built here (saved to a temp dir).
``--device cpu`` is a dry mode (small sizes, gloo, no bandwidth bound) to check the script itself.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
ROWS: list[tuple[str, str, str]] = []  # (check, status, detail)


def check(name):
    def wrap(fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            try:
                detail = fn(*a, **k) or ""
                ROWS.append((name, "ok", f"{detail} ({time.perf_counter() - t0:.0f}s)"))
            except Exception as e:  # noqa: BLE001 - every failure is reported and fails the script
                traceback.print_exc()
                ROWS.append((name, "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"))
        return run
    return wrap


VLLM_PY = os.environ.get("VLLM_PYTHON", str(ROOT / ".venv-vllm" / "bin" / "python"))


def cli(args: list[str], run_dir: Path, timeout: int, python: str = sys.executable) -> None:
    cmd = [python, "-m", "rltrain.cli", *args, f"run_dir={run_dir}", "log.console=false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-8000:])
        raise RuntimeError(f"rltrain {' '.join(args[:3])} ... exited {r.returncode}")
    if not (run_dir / "metrics.jsonl").exists():
        raise RuntimeError(f"no metrics.jsonl in {run_dir}")


TINY = ["model=tiny", "data.n_train=64", "data.n_test=8", "eval.size=8", "eval.max_new_tokens=8",
        "rollout.max_new_tokens=16", "train.prompts_per_step=4", "train.samples_per_prompt=8", "train.steps=2",
        "model.dtype=bf16"]


def build_llama(out: Path, device: str):
    """A random Llama (~100M parameters on a GPU: hidden 768, 12 layers, vocab 32000)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from rltrain.engine.model import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    big = device == "cuda"
    cfg = LlamaConfig(vocab_size=32000 if big else 4096, hidden_size=768 if big else 128,
                      intermediate_size=2048 if big else 256, num_hidden_layers=12 if big else 2,
                      num_attention_heads=12 if big else 4, num_key_value_heads=4 if big else 2,
                      max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


@check("GRPO 2 steps bf16 (tiny)")
def grpo(tmp: Path, timeout: int):
    cli(["algo=grpo", "reward=python", "reward.fn=tests.toy_rewards:contains_seven", *TINY], tmp / "grpo", timeout)


@check("PPO 2 steps bf16 (tiny)")
def ppo(tmp: Path, timeout: int):
    cli(["algo=ppo", "reward=python", "reward.fn=tests.toy_rewards:contains_seven", *TINY], tmp / "ppo", timeout)


@check("GRPO ZeRO-2, 1 rank, bf16")
def zero2(tmp: Path, timeout: int):
    cli(["algo=grpo", "deepspeed=zero2", "reward=python", "reward.fn=tests.toy_rewards:contains_seven", *TINY],
        tmp / "zero2", timeout)


@check("GRPO ZeRO-3, 1 rank, bf16")
def zero3(tmp: Path, timeout: int):
    cli(["algo=grpo", "deepspeed=zero3", "reward=python", "reward.fn=tests.toy_rewards:contains_seven", *TINY],
        tmp / "zero3", timeout)


def need_vllm() -> None:
    """The vLLM checks' Python must exist and import vLLM (a CUDA build on a GPU: ``pip install vllm``)."""
    if not Path(VLLM_PY).exists():
        raise RuntimeError(f"no {VLLM_PY}: run `make vllm` (or set VLLM_PYTHON), or pass --no-vllm")
    r = subprocess.run([VLLM_PY, "-c", "import vllm"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"{VLLM_PY} cannot import vllm: {(r.stderr.strip().splitlines() or ['?'])[-1][:100]}")


@check("vLLM engine colocated, bf16: push + log-probs (~100M Llama)")
def vllm_engine(model_dir: Path, device: str, timeout: int):
    need_vllm()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([VLLM_PY, str(ROOT / "scripts" / "gpu" / "vllm_smoke.py"), str(model_dir), "--device", device],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    last = (r.stdout.strip().splitlines() or [""])[-1]
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-8000:])
        raise RuntimeError(last or f"vllm_smoke.py exited {r.returncode}")
    return last


@check("GRPO 2 steps bf16, rollout.engine=vllm (tiny)")
def grpo_vllm(tmp: Path, timeout: int):
    import json

    need_vllm()
    run = tmp / "grpo_vllm"
    cli(["algo=grpo", "reward=python", "reward.fn=tests.toy_rewards:contains_seven", *TINY,
         "model.tiny_hidden_size=128", "rollout.engine=vllm"], run, timeout, python=VLLM_PY)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"event"' not in x]
    if [r["step"] for r in rows] != [1, 2] or not all("time/weight_sync" in r for r in rows):
        raise RuntimeError("expected steps 1-2, each with time/weight_sync")
    d = [r["mismatch/abs_dlogp_mean"] for r in rows]
    if not all(x < 0.05 for x in d):  # bf16 trainer vs bf16 vLLM: ~1e-3 measured on a CPU (docs/vllm.md)
        raise RuntimeError(f"rollout↔trainer mean |dlogp| {d}: the push or the engine is off")
    syncs = ", ".join("%.2f" % r["time/weight_sync"] for r in rows)
    gaps = ", ".join("%.1e" % x for x in d)
    return f"weight sync {syncs} s; |dlogp| {gaps}; {rows[-1]['perf/tokens_per_s']:.0f} tok/s"


def hbm_bandwidth(device: str) -> float:
    """Measured device copy bandwidth (bytes/s: read + write of a 1 GiB buffer)."""
    n = (1 << 30) // 4 if device == "cuda" else (1 << 26) // 4
    a = torch.empty(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    sync()
    return 2 * a.numel() * 4 * 10 / (time.perf_counter() - t0)


@check("rollout tokens/s, batch 64, bf16 (~100M Llama)")
def rollout_speed(model_dir: Path, device: str):
    from rltrain.engine.model import load_model
    from rltrain.rollout.engine import SamplingParams, generate

    model, tok = load_model("hf", str(model_dir), dtype="bf16")
    model.to(device)
    prompts = [tok.encode(f"question {i}: what is {i} + {i}?") for i in range(8)]
    params = SamplingParams(max_new_tokens=128 if device == "cuda" else 16, n=8, temperature=1.0)
    kw = dict(eos_token_ids=[], pad_token_id=tok.pad_token_id)  # no EOS: every row runs the full length
    generate(model, prompts[:2], SamplingParams(max_new_tokens=4, n=2), **kw)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    ro = generate(model, prompts, params, **kw)
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tokens = int(ro.lengths.sum())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = hbm_bandwidth(device)
    bound = bw / weight_bytes * 64  # each decode step reads every weight once for the whole batch
    return f"{tokens / dt:.0f} tok/s; bound {bound:.0f} tok/s ({bw / 1e9:.0f} GB/s copy, {weight_bytes / 1e6:.0f} MB weights): {tokens / dt / bound:.1%}"


@check("bf16 vs fp32 log-prob mismatch (~100M Llama)")
def mismatch(model_dir: Path, device: str):
    from rltrain.engine.actor import LocalActor, OptimConfig
    from rltrain.engine.model import load_model
    from rltrain.rollout.engine import SamplingParams, generate

    ref, tok = load_model("hf", str(model_dir), dtype="fp32")
    ref.to(device)
    opt = OptimConfig(lr=1e-5, weight_decay=0.0, betas=(0.9, 0.99), warmup_steps=0, schedule="constant",
                      total_steps=1, max_grad_norm=1.0)
    actor = LocalActor(load_model("hf", str(model_dir), dtype="fp32")[0].to(device), opt, dtype="bf16")
    prompts = [tok.encode(f"question {i}: what is {i} + {i}?") for i in range(8)]
    ro = generate(actor.module, prompts, SamplingParams(max_new_tokens=32, n=4), eos_token_ids=[],
                  pad_token_id=tok.pad_token_id)
    mask = ro.response_mask.bool()

    def logprobs(model):  # one full forward on the device, prompts left-padded
        width = max(len(p) for p in ro.prompt_ids)
        ids = torch.full((len(ro.prompt_ids), width), tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(ro.prompt_ids):
            ids[i, width - len(p):] = torch.tensor(p)
            attn[i, width - len(p):] = 1
        ids = torch.cat([ids, ro.response_ids], 1).to(device)
        attn = torch.cat([attn, torch.ones_like(ro.response_ids)], 1).to(device)
        pos = (attn.cumsum(1) - 1).clamp(min=0)  # real-token positions, as the sampler uses
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits[:, width - 1:-1].float()
        return torch.log_softmax(logits, -1).gather(-1, ro.response_ids.to(device).unsqueeze(-1)).squeeze(-1).cpu()

    with torch.no_grad():
        lp32, lp16 = logprobs(ref), logprobs(actor.module)
    d = (lp32.cpu() - lp16.cpu())[mask].abs()
    s = (ro.logprobs - lp16.cpu())[mask].abs()
    if not torch.isfinite(d).all() or d.mean() > 0.05:
        raise RuntimeError(f"bf16 log-probs far from fp32: mean |dlogp| {d.mean():.3g}")
    return f"mean |dlogp| {d.mean():.2e}, max {d.max():.2e}; sampler vs trainer (bf16) mean {s.mean():.2e}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--skip-runs", action="store_true", help="only the in-process checks (no rltrain runs)")
    ap.add_argument("--no-vllm", action="store_true", help="leave out the vLLM engine's checks")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("smoke: no CUDA GPU visible (use --device cpu for the dry mode)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rltrain-smoke-") as d:
        tmp = Path(d)
        n = build_llama(tmp / "llama", args.device)
        ROWS.append(("random Llama built locally", "ok", f"{n / 1e6:.0f}M parameters"))
        rollout_speed(tmp / "llama", args.device)
        mismatch(tmp / "llama", args.device)
        if not args.no_vllm:
            vllm_engine(tmp / "llama", args.device, 300)
        if not args.skip_runs:
            for fn in (grpo, ppo, zero2, zero3) + (() if args.no_vllm else (grpo_vllm,)):
                fn(tmp, 240)
    w = max(len(r[0]) for r in ROWS)
    print(f"\nrltrain GPU smoke ({args.device}, {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, {time.perf_counter() - t0:.0f}s)")
    for name, status, detail in ROWS:
        print(f"  {name:<{w}}  {status:<4}  {detail}")
    failed = [r for r in ROWS if r[1] != "ok"]
    print(f"{len(failed)} failed" if failed else "all passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
