"""Tool-call rate and accuracy of the untrained SmolLM2-135M on env=calculator episodes (docs/environments.md,
Results): 24 held-out three-digit questions, greedy and at T = 0.7 (4 samples each), without and with a
one-shot tool-call example in the system message. Runs rltrain's multi-turn rollout directly, no training.

    python scripts/bench/calculator_probe.py        # ~10 min on a 2-core CPU
"""
import time

import torch

from rltrain.engine.model import load_model
from rltrain.data.arith import arith
from rltrain.envs import episode_factory
from rltrain.rollout import SamplingParams
from rltrain.rollout.multiturn import ChatDelta, Limits, run_episodes
from rltrain.rewards.math import MathReward
torch.set_num_threads(2)
model, tok = load_model("smollm2_135m", None, dtype="fp32")
shot = ('Example. User: What is 12 + 30? Assistant: <tool_call>{"name": "calculate", "arguments": {"expression": "12 + 30"}}</tool_call> '
        'Tool: 42. Assistant: The answer is \\boxed{42}.')
samples = arith(difficulty=2, n_train=1, n_test=24, seed=0).test
for name, sp in (("no example", None), ("one example", shot)):
    make = episode_factory("calculator", system_prompt=sp, tool_timeout_s=5, max_tool_output_chars=2000, max_invalid_tool_calls=2)
    for temp, n in ((0.0, 1), (0.7, 4)):
        t0 = time.time()
        envs = [make() for _ in range(len(samples) * n)]
        ep = run_episodes(model, tok, ChatDelta(tok, "smollm2"), envs, samples, SamplingParams(max_new_tokens=64, temperature=temp, n=n),
                          Limits(3, 192, 32), eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0))
        seq = [samples[i // n] for i in range(len(envs))]
        acc = sum(MathReward(use_math_verify=False)(seq, ep.final_texts).info["correct"]) / len(envs)
        st = ep.stats
        print(f"{name:12s} T={temp} episodes={len(envs)} tool-call rate={sum(st['called_tool'])/len(envs):.3f} "
              f"invalid/ep={sum(st['invalid_calls'])/len(envs):.2f} turns={sum(st['turns'])/len(envs):.2f} acc={acc:.3f} "
              f"prefill/episode tokens={sum(st['prefill_tokens'])/sum(st['episode_tokens']):.2f} {time.time()-t0:.0f}s", flush=True)
print(repr(ep.final_texts[0])[:300], ep.messages[0][2:5])
