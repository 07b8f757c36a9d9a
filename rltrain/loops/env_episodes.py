"""Multi-turn episodes scored into the loops' ``Scored`` container (``env`` other than single_turn).

The episode is one row: the environment's first prompt, then model and environment tokens with the
loss mask 0 on the environment's (``rollout.multiturn``). The reward scores the last assistant turn
(the configured ``reward=``, or the environment's own ``reward`` method where it has one), so
advantages are per episode and every sample of a GRPO group starts from the same reset. Per-episode
numbers go into the reward info as ``env/<name>`` and are logged as batch means by
``episodes.reward_metrics`` (``env/called_tool``: the tool-call rate).
"""
from __future__ import annotations

import dataclasses
import time

import torch

from rltrain.config import EnvConfig, RunConfig
from rltrain.engine.model import eos_token_ids
from rltrain.envs import episode_factory
from rltrain.loops.episodes import Scored, logged_info_keys
from rltrain.rewards.base import score_safely
from rltrain.rollout import SamplingParams
from rltrain.rollout.multiturn import STATS, ChatDelta, Limits, run_episodes
from rltrain.types import RewardOutput, Sample


def env_factory(cfg: RunConfig):
    """The rollout's ``rltrain.envs.EnvFactory`` (None for single_turn): one fresh environment per call,
    the class checked once; the caller closes it (python_tool: its sandbox)."""
    e = cfg.env
    shared = {f.name for f in dataclasses.fields(EnvConfig)}
    options = {f.name: getattr(e, f.name) for f in dataclasses.fields(e) if f.name not in shared}
    return episode_factory(e.name, system_prompt=cfg.data.system_prompt, tool_timeout_s=e.tool_timeout_s,
                           max_tool_output_chars=e.max_tool_output_chars,
                           max_invalid_tool_calls=e.max_invalid_tool_calls, **options)


def play_and_score(module, tokenizer, samples: list[Sample], reward_fn, cfg: RunConfig, *, params: SamplingParams,
                   generator: torch.Generator, first_prompt_index: int = 0) -> tuple[Scored, dict]:
    """``params.n`` episodes per sample, scored; returns (Scored, timings) like ``rollout_and_score``."""
    t0 = time.time()
    e = cfg.env
    make = env_factory(cfg)
    model_name = cfg.model.path or cfg.model.name
    module.eval()
    try:
        envs = [make() for _ in range(len(samples) * params.n)]
        ep = run_episodes(module, tokenizer, ChatDelta(tokenizer, model_name), envs, samples, params,
                          Limits(max_turns=e.max_turns, max_episode_tokens=e.max_episode_tokens,
                                 max_tool_output_tokens=e.max_tool_output_tokens),
                          eos_token_ids=eos_token_ids(module, tokenizer), pad_token_id=tokenizer.pad_token_id,
                          generator=generator, first_prompt_index=first_prompt_index)
    finally:
        make.close()
        module.train()
    t1 = time.time()
    seq_samples = [samples[i // params.n] for i in range(len(envs))]
    out = score_safely(reward_fn, seq_samples, ep.final_texts, max_fail_fraction=cfg.reward.max_fail_fraction)
    scores = list(out.scores)
    for i, env in enumerate(envs):  # the environment's own episode reward, where it has one
        own = env.reward(seq_samples[i], ep.final_texts[i])
        if own is not None:
            scores[i] = own
    info = {**out.info, **{f"env/{k}": v for k, v in ep.stats.items()}}
    t2 = time.time()
    scored = Scored(
        prompt_ids=ep.prompt_ids, response_ids=ep.response_ids, mask=ep.mask, logprobs=ep.logprobs,
        entropies=ep.entropies, lengths=ep.lengths, finished=ep.finished, samples=seq_samples,
        completions=ep.final_texts, scores=torch.tensor(scores, dtype=torch.float32),
        reward=RewardOutput(scores, info),
        info_keys=logged_info_keys(reward_fn) + tuple(f"env/{k}" for k in STATS))
    return scored, {"time/rollout": t1 - t0, "time/reward": t2 - t1}
