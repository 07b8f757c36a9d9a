"""The vLLM engine's part of the GPU smoke test (scripts/gpu/smoke.py runs it with .venv-vllm's Python):
``rollout.engine=vllm`` colocated with a bf16 trainer on one device, as a run uses it (docs/vllm.md).

    python scripts/gpu/vllm_smoke.py MODEL_DIR [--device cuda|cpu]

1. A bf16 LocalActor of MODEL_DIR (where rltrain's loops keep it) and a VLLMEngine beside it in this process
   (bf16, on the GPU when there is one, 1 GiB KV cache), the actor's weights pushed at start; 64 sequences
   sampled (tok/s), their vLLM log-probs against the trainer's bf16 forward (mean and max |Δlogp|; fails
   above a mean of 0.05 or on a non-finite value).
2. One real optimizer step of the actor (lr 1e-2): the engine is stale (mean |Δlogp| grows); after a timed
   push it is back within the bound of step 1.
Prints one summary line last (the smoke's detail column); exits non-zero on a failed check.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = ap.parse_args()
    from rltrain.engine.actor import LocalActor, OptimConfig
    from rltrain.engine.model import load_model
    from rltrain.rollout import SamplingParams, response_logprobs
    from rltrain.rollout.vllm_engine import VLLMEngine

    big = args.device == "cuda"
    model, tok = load_model("hf", args.model_dir, dtype="fp32")
    opt = OptimConfig(lr=1e-2, weight_decay=0.0, betas=(0.9, 0.99), warmup_steps=0, schedule="constant",
                      total_steps=1, max_grad_norm=1.0)
    actor = LocalActor(model, opt, dtype="bf16")  # the trainer's weights stay where rltrain's loops keep them
    t0 = time.perf_counter()
    engine = VLLMEngine(actor.module, tok, dtype="bf16", max_model_len=512, kv_cache_gb=1.0 if big else 0.25,
                        threads=None if big else 2)
    start_s = time.perf_counter() - t0
    prompts = [tok.encode(f"question {i}: what is {i} + {i}?") for i in range(8)]
    params = SamplingParams(max_new_tokens=128 if big else 16, n=8, temperature=1.0)
    eos = [tok.eos_token_id]

    def gap():
        """(mean, max) |vLLM log-prob − trainer bf16 log-prob| over the sampled tokens, tokens, seconds."""
        t = time.perf_counter()
        ro = engine.generate(prompts, params, eos_token_ids=eos, pad_token_id=tok.pad_token_id,
                             generator=torch.Generator().manual_seed(0))
        dt = time.perf_counter() - t
        with torch.no_grad():
            lp, _ = response_logprobs(actor.module, ro.prompt_ids, ro.response_ids, pad_id=tok.pad_token_id,
                                      temperature=1.0)
        d = (lp.float() - ro.logprobs)[ro.response_mask.bool()].abs()
        return d.mean().item(), d.max().item(), int(ro.lengths.sum()), dt, ro

    mean0, max0, tokens, dt, ro = gap()
    # One real optimizer step (fp32 masters → bf16 compute weights, as in a run): lower the sampled tokens' NLL.
    lp, _ = response_logprobs(actor.module, ro.prompt_ids, ro.response_ids, pad_id=tok.pad_token_id, temperature=1.0)
    actor.backward(-(lp * ro.response_mask).sum() / ro.response_mask.sum())
    actor.step()
    stale = gap()[0]
    push_s = engine.push(actor.module)
    mean1, max1 = gap()[:2]
    engine.close()
    line = (f"start {start_s:.1f}s; {tokens / dt:.0f} tok/s; |dlogp| mean {mean0:.2e} max {max0:.2e}; "
            f"stale {stale:.2e}; push {push_s:.2f}s; after push mean {mean1:.2e} max {max1:.2e}")
    ok = all(map(torch.isfinite, map(torch.tensor, (mean0, max0, mean1, max1)))) and mean0 < 0.05 \
        and mean1 < 0.05 and stale > 2 * max(mean1, 1e-3)
    print(line if ok else "FAILED: " + line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
