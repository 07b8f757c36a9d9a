"""SPO-chain's Monte-Carlo phase with and without shared prefixes (issue 17).

One chain-like workload on SmolLM2-135M-Instruct: 8 arith questions × 8 samples (T = 0.7, 64 new
tokens), a cut state every ``--every`` response tokens of each sample, ``--mc`` continuations per
state capped at the budget left (what ``loops/spo.py`` does). The MC ``generate`` call runs with
each state prefilled alone and with ``shared_prefixes`` (each sample encoded once, every state
starting from its KV), alternating ``--repeats`` times; reports the median wall and process CPU
seconds, the prefill tokens and whether both drew the same continuations.

    python scripts/bench/mc_prefill_bench.py --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rltrain.data import render_prompt  # noqa: E402
from rltrain.data.arith import arith  # noqa: E402
from rltrain.engine.model import eos_token_ids, load_model  # noqa: E402
from rltrain.rollout import SamplingParams, generate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--every", type=int, default=8, help="a cut state every N response tokens")
    ap.add_argument("--mc", type=int, default=4, help="continuations per cut state")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2_135m", dtype="fp32")
    model.eval()
    eos = eos_token_ids(model, tok)
    samples = arith(difficulty=1, n_train=8, n_test=8, seed=0).train
    prompts = [tok(render_prompt(tok, s.question), add_special_tokens=False).input_ids for s in samples]
    budget = 64
    ro = generate(model, prompts, SamplingParams(max_new_tokens=budget, temperature=0.7, n=8), eos_token_ids=eos,
                  pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0))
    states, caps, source_of, sources = [], [], [], []
    for i in range(len(ro.lengths)):
        n = int(ro.lengths[i])
        cuts = list(range(args.every - 1, n - 1, args.every))
        if not cuts:
            continue
        sources.append(ro.prompt_ids[i] + ro.response_ids[i, : cuts[-1] + 1].tolist())
        for c in cuts:
            states.append(ro.prompt_ids[i] + ro.response_ids[i, : c + 1].tolist())
            caps.append(budget - (c + 1))
            source_of.append(len(sources) - 1)
    params = SamplingParams(max_new_tokens=budget, temperature=0.7, n=args.mc)

    def mc(shared: bool):
        return generate(model, states, params, eos_token_ids=eos, pad_token_id=tok.pad_token_id,
                        generator=torch.Generator().manual_seed(1), max_new_per_prompt=caps,
                        shared_prefixes=(sources, source_of) if shared else None)

    times = {False: [], True: []}
    outs = {}
    for _ in range(args.repeats):
        for shared in (False, True):
            w0, c0 = time.perf_counter(), time.process_time()
            outs[shared] = mc(shared)
            times[shared].append((time.perf_counter() - w0, time.process_time() - c0))
    a, b = outs[False], outs[True]
    same_rows = (a.response_ids == b.response_ids).all(1) & (a.lengths == b.lengths)
    # log-probs of the tokens both drew, up to each row's first difference
    agree = (a.response_ids == b.response_ids).long().cumprod(1).bool() & a.response_mask.bool() & b.response_mask.bool()
    dlp = (a.logprobs - b.logprobs).abs()[agree]
    print(f"{len(states)} cut states from {len(sources)} samples, {args.mc} continuations each, "
          f"{int(b.lengths.sum())} MC tokens; identical continuations {int(same_rows.sum())}/{len(same_rows)}, "
          f"|Δlogp| on common tokens: mean {float(dlp.mean()):.1e}, max {float(dlp.max()):.1e}")
    print(f"prefill tokens: {sum(map(len, states))} alone, {sum(map(len, sources))} shared")
    for shared in (False, True):
        wall = statistics.median(t[0] for t in times[shared])
        cpu = statistics.median(t[1] for t in times[shared])
        print(f"{'shared' if shared else 'alone '}: wall {wall:.1f} s, process CPU {cpu:.1f} s")


if __name__ == "__main__":
    main()
