"""Issue 14: does a bf16 GRPO step point where the fp32 step points? One batch of the embedded
default (8 questions × 8 samples, T = 0.7, sampled by the fp32 model), group-normalised advantages,
the policy-gradient loss over the rows with a non-zero advantage; its gradient computed by the fp32
model and by the bf16 model rltrain trains (``load_model(dtype="bf16")``: bf16 body, fp32 head and
final-norm output). Prints the cosine and norm ratio of the two gradients overall and per tensor
kind, next to the cosine between the fp32 gradients of two disjoint halves of the batch (the size
of sampling noise). Usage: python scripts/repro/bf16_gradient.py [batch seed, default 0]
"""
import sys

import torch

from rltrain.data import render_prompt
from rltrain.data.arith import arith
from rltrain.engine.model import eos_token_ids, load_model
from rltrain.rewards.math import extract_answer, normalize_answer
from rltrain.rollout import SamplingParams, generate
from rltrain.rollout.forward import response_logprobs


def gradient(model, ro, adv, rows, pad, micro=16):
    model.zero_grad(set_to_none=True)
    tokens = ro.response_mask[rows].sum()
    for i in range(0, len(rows), micro):
        sl = rows[i:i + micro]
        lp, _ = response_logprobs(model, [ro.prompt_ids[k] for k in sl], ro.response_ids[sl], pad_id=pad,
                                  temperature=0.7)
        (-(adv[sl, None] * lp * ro.response_mask[sl]).sum() / tokens).backward()
    return {n: p.grad.double().clone() for n, p in model.named_parameters() if p.grad is not None}


def cosine(a, b, keys):
    x = torch.cat([a[k].flatten() for k in keys])
    y = torch.cat([b[k].flatten() for k in keys])
    return float(x @ y / (x.norm() * y.norm())), float(y.norm() / x.norm())


def main(seed: int) -> None:
    torch.manual_seed(seed)
    m32, tok = load_model("smollm2_135m", dtype="fp32")
    samples = arith(difficulty=1, n_train=8 * (seed + 1), n_test=8, seed=0).train[8 * seed:]
    prompts = [tok(render_prompt(tok, s.question), add_special_tokens=False).input_ids for s in samples]
    ro = generate(m32, prompts, SamplingParams(max_new_tokens=64, temperature=0.7, n=8),
                  eos_token_ids=eos_token_ids(m32, tok), pad_token_id=tok.pad_token_id,
                  generator=torch.Generator().manual_seed(seed))
    right = []
    for j in range(len(ro.lengths)):
        answer = extract_answer(tok.decode(ro.response_ids[j, : int(ro.lengths[j])], skip_special_tokens=True))
        right.append(float(answer is not None and normalize_answer(answer) == samples[int(ro.prompt_index[j])].answer))
    r = torch.tensor(right).view(8, 8)
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).view(-1)
    rows = [j for j in range(len(adv)) if adv[j] != 0]
    print(f"batch seed {seed}: right answers per question {r.sum(1).int().tolist()}, {len(rows)} rows trained")
    pad = tok.pad_token_id
    g32 = gradient(m32, ro, adv, rows, pad)
    h1, h2 = gradient(m32, ro, adv, rows[0::2], pad), gradient(m32, ro, adv, rows[1::2], pad)
    m16, _ = load_model("smollm2_135m", dtype="bf16")
    g16 = gradient(m16, ro, adv, rows, pad)
    kinds = {"all": list(g32), "embedding": [k for k in g32 if "embed" in k],
             "attention": [k for k in g32 if "self_attn" in k], "mlp": [k for k in g32 if "mlp" in k],
             "norms": [k for k in g32 if "norm" in k]}
    print("| tensors | cos(fp32, bf16) | norm bf16 / fp32 | cos(half, other half), fp32 |")
    print("|---|---|---|---|")
    for name, keys in kinds.items():
        c, ratio = cosine(g32, g16, keys)
        print(f"| {name} | {c:.4f} | {ratio:.3f} | {cosine(h1, h2, keys)[0]:.3f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
