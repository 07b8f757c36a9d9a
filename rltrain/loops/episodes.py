"""Rollout + reward, shared by the RL loops: which prompts a step draws (deterministic, independent
of the rank count), sampling, scoring, and the ``Scored`` container.

Determinism: the prompt order is a per-epoch permutation drawn from the seed; every step's
sampling generator is seeded from (seed, step) alone, and each sequence's random stream from that
generator and the global position of its prompt in the step's batch (``rollout_generator``,
``first_prompt_index``), so the samples do not depend on the number of ranks. Resuming therefore
needs only the model, optimizer, scheduler and step; a killed-and-resumed run replays exactly.
"""
from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass

import torch

from rltrain.algos import core
from rltrain.algos.grpo import batch_normalize, gdpo_scores
from rltrain.config import RunConfig
from rltrain.engine.dist import Dist
from rltrain.engine.model import eos_token_ids
from rltrain.rewards.base import score_safely
from rltrain.rollout import SamplingParams, generate
from rltrain.types import RewardOutput, Sample


class PromptOrder:
    """Deterministic prompt order: a fresh seeded permutation every pass over the data."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed

    def indices(self, step: int, per_step: int) -> list[int]:
        out = []
        for pos in range(step * per_step, (step + 1) * per_step):
            epoch, i = divmod(pos, self.n)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            out.append(int(torch.randperm(self.n, generator=g)[i]))
        return out


class Stream(enum.IntEnum):
    """The run's named seed streams: stream X of a run draws from seed ``cfg.seed + X``. The offsets
    are fixed numbers (changing one changes every run's results), distinct so no two uses share draws."""

    ROLLOUT = 0
    """The training rollouts' sampling (``rollout_generator``)."""
    UPDATE = 7
    """The policy update's random choices (Clip-Cov's tie-breaking), the same on every rank."""
    MC_VALUES = 13
    """SPO-chain's Monte-Carlo continuations from the cut states."""
    EDGE_REPLAY = 29
    """SPO-tree's draw of replayed edges (per rank)."""


def step_generator(seed: int, step: int, rank: int, stream: Stream = Stream.ROLLOUT) -> torch.Generator:
    """A generator for ``step``'s random choices of ``stream``: pass rank 0 on every rank for choices
    the ranks share (minibatch sampling), ``dist.rank`` for per-rank ones (SPO's edge replay)."""
    return torch.Generator().manual_seed(((seed + stream) * 1_000_003 + step) * 1009 + rank)


def update_generator(seed: int, step: int) -> torch.Generator:
    """The policy update's generator of ``step`` (``Stream.UPDATE``), the same on every rank."""
    return step_generator(seed, step, 0, Stream.UPDATE)


def rollout_generator(seed: int, step: int, stream: Stream = Stream.ROLLOUT) -> torch.Generator:
    """The sampling generator of ``step``, the same on every rank. Pass the rank's first global
    prompt position as ``first_prompt_index`` with it: each sequence's random stream then depends on
    (seed, step, global prompt position, sample index) only, so a 2-rank run samples exactly what a
    1-rank run with the same global batch samples."""
    return step_generator(seed, step, 0, stream)


def rank_slice(order: PromptOrder, step: int, prompts_per_step: int, dist: Dist) -> tuple[list[int], int]:
    """This rank's dataset indices of ``step``'s prompts and the global position of the first one
    (a prompt's whole group stays on one rank)."""
    per_rank = prompts_per_step // dist.world_size
    first = dist.rank * per_rank
    return order.indices(step, prompts_per_step)[first:first + per_rank], first


# --------------------------------------------------------------------------- rollout + reward


@dataclass
class Scored:
    """A rollout with its rewards, on one rank."""

    prompt_ids: list[list[int]]
    response_ids: torch.Tensor  # [N, T]
    mask: torch.Tensor  # [N, T] float
    logprobs: torch.Tensor  # [N, T] sampling log-probs
    lengths: torch.Tensor  # [N]
    finished: torch.Tensor  # [N] bool: ended by EOS / stop string
    samples: list[Sample]  # [N], the prompt of each sequence
    completions: list[str]
    scores: torch.Tensor  # [N] float32
    reward: RewardOutput
    entropies: torch.Tensor | None = None  # [N, T] the policy's entropy at each sampled token
    info_keys: tuple[str, ...] = ()  # per-completion info whose means are logged (``logged_info_keys``)

    def select(self, rows: list[int]) -> Scored:
        """The rows ``rows`` (in that order), every field indexed alike."""
        idx = torch.tensor(rows, dtype=torch.long)
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                out[f.name] = v[idx]
            elif isinstance(v, RewardOutput):
                out[f.name] = type(v)([v.scores[i] for i in rows], {k: [x[i] for i in rows] for k, x in v.info.items()})
            elif isinstance(v, list):
                out[f.name] = [v[i] for i in rows]
            else:  # None, or info_keys (the same for every row)
                out[f.name] = v
        return Scored(**out)

    @staticmethod
    def cat(parts: list[Scored]) -> Scored:
        """Rows of ``parts`` one after another; ``[N, T]`` fields right-padded with 0 to the widest T."""
        if len(parts) == 1:
            return parts[0]
        T = max(p.response_ids.shape[1] for p in parts)
        out = {}
        for f in dataclasses.fields(Scored):
            vals = [getattr(p, f.name) for p in parts]
            v = vals[0]
            if isinstance(v, torch.Tensor):
                out[f.name] = torch.cat([torch.nn.functional.pad(x, (0, T - x.shape[1])) if x.dim() == 2 else x
                                         for x in vals])
            elif isinstance(v, RewardOutput):
                out[f.name] = type(v)(sum((x.scores for x in vals), []),
                                      {k: sum((x.info[k] for x in vals), []) for k in v.info})
            elif isinstance(v, list):
                out[f.name] = sum(vals, [])
            else:  # None, or info_keys (one reward: the same in every part)
                out[f.name] = v
        return Scored(**out)


def rollout_and_score(actor_module, tokenizer, samples: list[Sample], prompt_ids, reward_fn, cfg: RunConfig,
                      *, n: int, generator: torch.Generator, params: SamplingParams | None = None,
                      first_prompt_index: int = 0, sampler=None):
    """Sample ``n`` responses per prompt and score them; returns (Scored, timings).
    ``first_prompt_index``: the global position of ``samples[0]`` (see ``rollout_generator``).
    ``sampler``: the engine to sample with instead of rltrain's own (``rollout.engine=vllm``: a
    ``rollout.vllm_engine.VLLMEngine`` holding ``actor_module``'s pushed weights).
    With an environment (``env`` other than single_turn) the responses are multi-turn episodes
    (``loops.env_episodes``; ``prompt_ids`` are then the environment's reset)."""
    t0 = time.time()
    params = params or SamplingParams(
        max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, n=n, stop_strings=tuple(cfg.rollout.stop_strings))
    if cfg.env.name != "single_turn":
        from rltrain.loops.env_episodes import play_and_score

        return play_and_score(actor_module, tokenizer, samples, reward_fn, cfg, params=params, generator=generator,
                              first_prompt_index=first_prompt_index)
    if sampler is not None:  # rollout.engine=vllm (rollout/vllm_engine.py), holding the actor's pushed weights
        ro = sampler.generate(prompt_ids, params, eos_token_ids=eos_token_ids(actor_module, tokenizer),
                              pad_token_id=tokenizer.pad_token_id, generator=generator,
                              first_prompt_index=first_prompt_index)
    else:
        actor_module.eval()
        ro = generate(actor_module, prompt_ids, params, eos_token_ids=eos_token_ids(actor_module, tokenizer),
                      pad_token_id=tokenizer.pad_token_id, tokenizer=tokenizer, generator=generator,
                      first_prompt_index=first_prompt_index)
        actor_module.train()
    t1 = time.time()
    seq_samples = [samples[int(i)] for i in ro.prompt_index]
    completions = [tokenizer.decode(r[: int(l)], skip_special_tokens=True)
                   for r, l in zip(ro.response_ids, ro.lengths)]
    out = score_safely(reward_fn, seq_samples, completions, max_fail_fraction=cfg.reward.max_fail_fraction)
    t2 = time.time()
    scored = Scored(
        prompt_ids=ro.prompt_ids, response_ids=ro.response_ids, mask=ro.response_mask.float(),
        logprobs=ro.logprobs, entropies=ro.entropies, lengths=ro.lengths,
        finished=torch.tensor([r == "stop" for r in ro.finish_reasons]),
        samples=seq_samples, completions=completions,
        scores=torch.tensor(out.scores, dtype=torch.float32), reward=out, info_keys=logged_info_keys(reward_fn))
    return scored, {"time/rollout": t1 - t0, "time/reward": t2 - t1}


def logged_info_keys(reward_fn) -> tuple[str, ...]:
    """The per-completion info whose batch means a step logs, fixed by the reward config (so the
    ranks know the names without asking each other): what each reward declares in its
    ``logged_info`` (the code reward: ``code/output_truncated``) and ``reward=combined``'s
    components (``reward/<label>``), a component's info named as ``CombinedReward`` names it
    (``<label>/<key>``, a key already starting with ``<label>/`` kept)."""
    parts = getattr(reward_fn, "components", None)
    if parts is None:
        return tuple(getattr(reward_fn, "logged_info", ()))
    keys = [f"reward/{label}" for label, _, _ in parts]
    keys += [k if k.startswith(f"{label}/") else f"{label}/{k}"
             for label, _, r in parts for k in getattr(r, "logged_info", ())]
    return tuple(sorted(keys))


def _floats(values, n: int) -> list[float]:
    """Per-completion info values as floats; None (a failed completion) or a missing list → 0."""
    return [0.0 if v is None else float(v) for v in (values or [None] * n)]


def reward_components(s: Scored, reward_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """``reward=combined``: each component's unweighted scores ``[K, N]`` (from its
    ``reward/<label>`` info; a failed completion's are 0, like its total) and the weights ``[K]``."""
    parts, n = reward_fn.components, len(s.completions)
    comps = torch.tensor([_floats(s.reward.info.get(f"reward/{label}"), n) for label, _, _ in parts],
                         dtype=torch.float32)
    return comps, torch.tensor([w for _, w, _ in parts], dtype=torch.float32)


def gdpo(s: Scored, reward_fn, cfg: RunConfig, group_size: int, *, eps: float = 1e-6, std_ddof: int = 1) -> None:
    """``reward.normalize=then_sum`` (GDPO): replace ``s.scores`` by the weighted sum of the
    components normalised within each prompt's group (``algos.grpo.gdpo_scores``); else nothing."""
    if getattr(cfg.reward, "normalize", "none") == "then_sum":
        comps, weights = reward_components(s, reward_fn)
        s.scores = gdpo_scores(comps, weights, group_size, eps=eps, std_ddof=std_ddof)


def gdpo_batch_scores(s: Scored, cfg: RunConfig, dist: Dist, *, eps: float = 1e-6,
                      std_ddof: int = 1) -> torch.Tensor | None:
    """GDPO's last step when ``reward.sum_normalize=batch`` (the paper): the weighted sums in
    ``s.scores`` (after ``gdpo``) normalised over the step's whole batch, all ranks
    (``algos.grpo.batch_normalize``), ``[N]``: GRPO's advantage, PPO's score. None otherwise."""
    r = cfg.reward
    if getattr(r, "normalize", "none") != "then_sum" or r.sum_normalize != "batch":
        return None
    ones = torch.ones_like(s.scores, dtype=torch.bool)
    moments = dist.sum(core.masked_moments(s.scores, ones))  # [3] over every rank's responses
    return batch_normalize(s.scores, moments=moments, eps=eps, std_ddof=std_ddof)


STEP_REWARD_KEYS = ("reward/mean", "reward/failed", "reward/accuracy")  # what reward_metrics logs itself


def rollout_metrics(s: Scored, times: dict, dist: Dist) -> dict:
    """A step's rollout metrics: ``reward_metrics`` and ``perf/tokens_per_s``, the tokens sampled on
    all ranks per second of ``times["time/rollout"]``."""
    out = reward_metrics(s, dist)
    tokens = dist.sum(torch.tensor([float(s.lengths.sum())], dtype=torch.float64)).item()
    out["perf/tokens_per_s"] = tokens / max(times["time/rollout"], 1e-9)
    return out


def reward_metrics(s: Scored, dist: Dist) -> dict:
    """Batch-wide reward and length statistics (summed across ranks)."""
    correct = s.reward.info.get("correct")
    failed = s.reward.info.get("failed", [False] * len(s.completions))
    local = torch.tensor([
        float(len(s.completions)), float(s.scores.sum()),
        float(sum(bool(c) for c in correct)) if correct is not None else 0.0,
        float(sum(bool(f) for f in failed)), float(s.lengths.sum()),
        float((~s.finished).sum()), float(s.lengths.max()) if len(s.lengths) else 0.0,
    ], dtype=torch.float64)
    tot = dist.sum(local[:6])
    n = tot[0].item()
    m = {"reward/mean": tot[1].item() / n, "reward/failed": int(tot[3].item()),
         "response/length_mean": tot[4].item() / n, "response/truncated_frac": tot[5].item() / n,
         "response/length_max": dist.max(local[6:7]).item()}
    if correct is not None:
        m["reward/accuracy"] = tot[2].item() / n
    # Means of per-completion info the user should see, named by the reward config (the same on
    # every rank; a rank without a value, e.g. all its completions failed, counts 0):
    # reward=combined's components (reward/<label>) and the code reward's capped output
    # (<label>/code/output_truncated → ..._frac: programs whose output hit the sandbox's cap).
    parts = [k for k in s.info_keys if k not in STEP_REWARD_KEYS]  # a component labelled "mean" stays hidden
    if parts:
        local_sums = [sum(_floats(s.reward.info.get(k), len(s.completions))) for k in parts]
        sums = dist.sum(torch.tensor(local_sums, dtype=torch.float64))
        m.update({k + ("_frac" if k.endswith("_truncated") else ""): sums[i].item() / n for i, k in enumerate(parts)})
    return m


