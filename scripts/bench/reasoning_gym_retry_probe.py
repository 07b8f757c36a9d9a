"""Does env=reasoning_gym's retry turn get SmolLM2-135M to write <answer> tags? (docs/environments.md,
Results): held-out chain_sum questions, greedy and at T = 0.7, one retry turn; the share of episodes
with tags after the first turn and after the retry, and the task's score of the last turn.

    python scripts/bench/reasoning_gym_retry_probe.py      # ~5-10 min on a 2-core CPU
"""
import time

import torch

from rltrain.data.reasoning_gym import reasoning_gym
from rltrain.engine.model import load_model
from rltrain.envs import episode_factory
from rltrain.rewards.reasoning_gym import ReasoningGymReward, extract
from rltrain.rollout import SamplingParams
from rltrain.rollout.multiturn import ChatDelta, Limits, run_episodes

torch.set_num_threads(2)
model, tok = load_model("smollm2_135m", None, dtype="fp32")
samples = reasoning_gym(tasks=[{"name": "chain_sum", "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                                 "max_digits": 2}}], size=1, n_test=16, seed=0).test
make = episode_factory("reasoning_gym", tool_timeout_s=5, max_tool_output_chars=2000, max_invalid_tool_calls=2,
                       retries=1)
for temp, n in ((0.0, 1), (0.7, 4)):
    t0 = time.time()
    envs = [make() for _ in range(len(samples) * n)]
    ep = run_episodes(model, tok, ChatDelta(tok, "smollm2"), envs, samples,
                      SamplingParams(max_new_tokens=96, temperature=temp, n=n), Limits(2, 400, 64),
                      eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                      generator=torch.Generator().manual_seed(0))
    seq = [samples[i // n] for i in range(len(envs))]
    first = [next(m["content"] for m in msgs if m["role"] == "assistant") for msgs in ep.messages]
    out = ReasoningGymReward()(seq, ep.final_texts)
    E = len(envs)
    print(f"T={temp} episodes={E} tags in turn 1={sum(extract(t) is not None for t in first) / E:.3f} "
          f"retried={sum(t == 2 for t in ep.stats['turns']) / E:.3f} "
          f"tags in the last turn={sum(x is not None for x in out.info['extracted']) / E:.3f} "
          f"exact={sum(out.info['correct']) / E:.3f} mean score={sum(out.scores) / E:.3f} {time.time() - t0:.0f}s",
          flush=True)
    print("  e.g.:", repr(ep.messages[0][-1]["content"])[:200], flush=True)
