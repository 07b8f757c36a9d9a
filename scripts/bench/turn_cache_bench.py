"""Tokens prefilled per episode and rollout time, with the KV cache carried across turns and without
(each turn prefilled from scratch), on multi-turn episodes whose environment answers every turn
(docs/environments.md, "KV cache"). Same random streams for both paths: the tokens must agree.

    python scripts/bench/turn_cache_bench.py --model tiny --stops abcdefgh   # seconds
    python scripts/bench/turn_cache_bench.py --model smollm2_135m --prompts 2 --samples 4   # ~5 min, 2 loaded cores

A turn ends at one of ``--stops`` (characters); a turn that reaches ``--turn-tokens`` ends its episode.
"""
import argparse
import time

import torch

from rltrain.engine.model import load_model
from rltrain.envs import ToolEnv
from rltrain.rollout import SamplingParams
from rltrain.rollout.multiturn import ChatDelta, Limits, run_episodes
from rltrain.types import Sample


class Echo:
    """Answers every assistant turn with a fixed message."""

    def step(self, text: str):
        return "ok, go on", False, {}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--turn-tokens", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stops", default=".!?\n")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, None, dtype="fp32", seed=0)
    model.eval()
    samples = [Sample(str(i), f"Count from {i} to {i + 20}, one number per turn.", "") for i in range(args.prompts)]
    params = SamplingParams(max_new_tokens=args.turn_tokens, temperature=1.0, n=args.samples,
                            stop_strings=tuple(args.stops))
    limits = Limits(max_turns=args.turns, max_episode_tokens=10_000, max_tool_output_tokens=64)
    results = {}
    for carry in (False, True, False, True):  # interleaved: the machine's load hits both alike
        envs = [ToolEnv(Echo(), system_prompt=None, tool_timeout_s=5, max_tool_output_chars=1000,
                        max_invalid_tool_calls=2) for _ in range(args.prompts * args.samples)]
        t0 = time.perf_counter()
        ep = run_episodes(model, tok, ChatDelta(tok, args.model), envs, samples, params, limits,
                          eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0),
                          carry_cache=carry)
        seconds = time.perf_counter() - t0
        print(f"carry_cache={carry}: {seconds:.2f} s", flush=True)
        results.setdefault(carry, []).append((ep, seconds))
    for carry in (False, True):
        ep, _ = results[carry][0]
        n = len(ep.final_texts)
        times = [s for _, s in results[carry]]
        print(f"carry_cache={carry!s:5s} episodes={n} turns/episode={sum(ep.stats['turns']) / n:.1f} "
              f"episode tokens={sum(ep.stats['episode_tokens']) / n:.0f} "
              f"prefilled/episode={sum(ep.stats['prefill_tokens']) / n:.0f} "
              f"rollout s={min(times):.2f} (runs: {', '.join(f'{t:.2f}' for t in times)})")
    a, b = results[False][0][0], results[True][0][0]
    on = a.mask.bool()
    print(f"same tokens: {torch.equal(a.response_ids, b.response_ids)}; "
          f"max |delta logp| at model tokens: {(a.logprobs[on] - b.logprobs[on]).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
