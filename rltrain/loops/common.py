"""Pieces every training loop uses: building the policy, reward and data from the typed config,
the deterministic prompt order, the training forward pass, greedy evaluation, checkpointing and
resume. The loops themselves (grpo.py, ppo.py, ...) stay flat and read top to bottom.

Determinism: the prompt order is a per-epoch permutation drawn from the seed; every step's
sampling generator is seeded from (seed, step) alone, and each sequence's random stream from that
generator and the global position of its prompt in the step's batch (``rollout_generator``,
``first_prompt_index``), so the samples do not depend on the number of ranks. Resuming therefore
needs only the model, optimizer, scheduler and step; a killed-and-resumed run replays exactly.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rltrain.algos.core import logprobs_from_logits, token_entropy
from rltrain.config import RunConfig
from rltrain.engine.actor import LocalActor, OptimConfig
from rltrain.engine.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint, save_hf, staging_dir
from rltrain.engine.dist import Dist
from rltrain.engine.lora import apply_lora, is_lora, merged_state_dict
from rltrain.engine.model import DTYPES, eos_token_ids, load_model, resolve_dtype
from rltrain.rewards import build_reward
from rltrain.rewards.base import score_safely
from rltrain.rollout import SamplingParams, generate
from rltrain.types import RewardOutput, Sample

log = logging.getLogger(__name__)

def option_kwargs(option) -> dict:
    """An option's fields minus those of its group's base schema: exactly the keyword arguments
    of the function or class the option names."""
    from rltrain.config import DataConfig, PolicyLossConfig, RewardConfig, TokenSelectionConfig

    base = next(b for b in (DataConfig, RewardConfig, TokenSelectionConfig, PolicyLossConfig) if isinstance(option, b))
    shared = {f.name for f in dataclasses.fields(base)}
    return {f.name: getattr(option, f.name) for f in dataclasses.fields(option) if f.name not in shared}


# --------------------------------------------------------------------------- setup


def load_policy_model(cfg: RunConfig) -> tuple[torch.nn.Module, object]:
    """The configured policy model in fp32 and its tokenizer (the same weights on every rank)."""
    return load_model(cfg.model.name, cfg.model.path, dtype="fp32", seed=cfg.seed,
                      **({"hidden_size": cfg.model.tiny_hidden_size, "num_layers": cfg.model.tiny_layers}
                         if cfg.model.name == "tiny" else {}))


def build_actor(cfg: RunConfig, dist: Dist, total_optimizer_steps: int):
    """The trainable policy (plain PyTorch or DeepSpeed) and its tokenizer."""
    model, tok = load_policy_model(cfg)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    lora = cfg.model.lora
    if lora.r > 0:
        model = apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                           target_modules=list(lora.target_modules), seed=cfg.seed)
    t = cfg.train
    optim = OptimConfig(lr=t.lr, weight_decay=t.weight_decay, betas=tuple(t.betas), warmup_steps=t.warmup_steps,
                        schedule=t.lr_schedule, total_steps=total_optimizer_steps, max_grad_norm=t.max_grad_norm)
    if cfg.deepspeed.stage > 0:
        from rltrain.engine.deepspeed import DeepSpeedActor

        return DeepSpeedActor(model, optim, cfg=cfg, dist=dist), tok
    return LocalActor(model, optim, dtype=cfg.model.dtype, dist=dist), tok


def build_reference(cfg: RunConfig, dist: Dist):
    """The frozen reference policy (the initial weights), called like the actor's module for
    log-probs: an inference-only ZeRO-3 engine under ``deepspeed.stage=3`` (parameters sharded),
    otherwise a plain frozen module in the compute dtype."""
    model, _ = load_policy_model(cfg)
    if cfg.deepspeed.stage == 3:
        from rltrain.engine.deepspeed import reference_engine

        return reference_engine(model, cfg=cfg, dist=dist)
    model = model.to(DTYPES[resolve_dtype(cfg.model.dtype)]).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_data(cfg: RunConfig):
    from rltrain.data import build_dataset

    return build_dataset(cfg.data.name, **option_kwargs(cfg.data))


def build_reward_fn(cfg: RunConfig, dist: Dist | None = None):
    """The configured reward. Under ``deepspeed.stage=3`` with several ranks a generative judge
    (alone or inside ``reward=combined``) becomes an inference-only ZeRO-3 engine: its parameters
    are sharded across the ranks like the reference model's."""
    reward = build_reward(cfg.reward.name, **option_kwargs(cfg.reward))
    if dist is not None and dist.world_size > 1 and cfg.deepspeed.stage == 3:
        for judge in _judges(reward):
            shard_judge(judge, cfg, dist)
    return reward


def _judges(reward) -> list:
    from rltrain.rewards.judge import JudgeReward

    parts = [r for _, _, r in getattr(reward, "components", [])] or [reward]
    return [r for r in parts if isinstance(r, JudgeReward)]


def shard_judge(judge, cfg: RunConfig, dist: Dist) -> None:
    """Replace the judge's model by a ZeRO-3 inference engine (loaded now, on every rank)."""
    from rltrain.engine.deepspeed import reference_engine

    judge.model  # noqa: B018 - loads model and tokenizer
    judge._model = reference_engine(judge._model, cfg=cfg, dist=dist)
    judge.lockstep = dist


def encode_prompts(tokenizer, samples: list[Sample], cfg: RunConfig) -> list[list[int]]:
    from rltrain.data import render_prompt

    texts = [render_prompt(tokenizer, s.question, system_prompt=cfg.data.system_prompt,
                           use_chat_template=cfg.data.use_chat_template) for s in samples]
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]


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


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """A generator for ``step``'s random choices: pass rank 0 on every rank for choices the ranks
    share (minibatch sampling), ``dist.rank`` for per-rank ones (SPO's edge replay)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + rank)


def rollout_generator(seed: int, step: int) -> torch.Generator:
    """The sampling generator of ``step``, the same on every rank. Pass the rank's first global
    prompt position as ``first_prompt_index`` with it: each sequence's random stream then depends on
    (seed, step, global prompt position, sample index) only, so a 2-rank run samples exactly what a
    1-rank run with the same global batch samples."""
    return step_generator(seed, step, 0)


def rank_slice(order: PromptOrder, step: int, prompts_per_step: int, dist: Dist) -> tuple[list[int], int]:
    """This rank's dataset indices of ``step``'s prompts and the global position of the first one
    (a prompt's whole group stays on one rank)."""
    per_rank = prompts_per_step // dist.world_size
    first = dist.rank * per_rank
    return order.indices(step, prompts_per_step)[first:first + per_rank], first


# --------------------------------------------------------------------------- forward


def pack(prompt_ids: list[list[int]], response_ids: torch.Tensor, pad_id: int):
    """Left-pad prompts and append the (right-padded) responses.

    Returns input_ids [B, P+T], attention_mask [B, P+T], position_ids [B, P+T]; the responses
    start at column P for every row.
    """
    B, T = response_ids.shape
    P = max(len(p) for p in prompt_ids)
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + T), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        attn[i, P - len(p):P] = 1
    ids[:, P:] = response_ids
    attn[:, P:] = 1  # padding after a response is causal-masked from everything before it
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return ids, attn, pos


def _unique_prompts(prompt_ids: list[list[int]]) -> tuple[list[list[int]], torch.Tensor]:
    """Distinct prompts in first-seen order and, per row, the index of its prompt among them."""
    first: dict[tuple[int, ...], int] = {}
    rows = [first.setdefault(tuple(p), len(first)) for p in prompt_ids]
    unique = [list(k) for k in first]
    return unique, torch.tensor(rows, dtype=torch.long)


def response_logits(model, prompt_ids, response_ids, *, pad_id: int, share_prompts: bool = True) -> torch.Tensor:
    """Logits ``[B, T, V]`` where ``[:, t]`` predicts response token ``t``.

    Only the T last positions go through the LM head (``logits_to_keep``). With ``share_prompts``
    (the default) two model calls: each distinct prompt (rows of a GRPO group or of SPO
    continuations share one) is encoded once with a KV cache, the cache rows are indexed out to the rows that use it (differentiably:
    the prompt's gradient is the sum over its rows) and only the responses are run on top. Same
    result as the packed forward up to float rounding, with the prompt tokens computed once per
    group instead of once per row (SmolLM2 on arith: 51 prompt tokens, ~50 response tokens, 8 rows
    per prompt: ~40% fewer tokens through the model, forward and backward).
    """
    T = response_ids.shape[1]
    unique, row_of = _unique_prompts(prompt_ids)
    # Always the two-call path, shared prompts or not: where each forward is a collective (ZeRO-3 on
    # several ranks) every rank must make the same calls whatever its data, and 1 and N ranks then
    # compute the same thing in the same order.
    if not share_prompts:
        ids, attn, pos = pack(prompt_ids, response_ids, pad_id)
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1, use_cache=False)
        return out.logits[:, :-1]  # position P-1+t predicts response token t
    P = max(len(p) for p in unique)
    ids = torch.full((len(unique), P), pad_id, dtype=torch.long)
    p_attn = torch.zeros((len(unique), P), dtype=torch.long)
    for i, p in enumerate(unique):
        ids[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
        p_attn[i, P - len(p):] = 1
    p_pos = (p_attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=p_attn, position_ids=p_pos, logits_to_keep=1, use_cache=True)
    cache = out.past_key_values
    for layer in cache.layers:  # prompt KV [U, ...] → one row per sequence [B, ...], autograd intact
        layer.batch_select_indices(row_of)
    first = out.logits[row_of]  # [B, 1, V]: the prompt's last position predicts response token 0
    attn = torch.cat([p_attn[row_of], torch.ones_like(response_ids)], dim=1)  # [B, P + T]
    pos = p_attn.sum(-1)[row_of, None] + torch.arange(T)  # responses continue each prompt's positions
    out = model(input_ids=response_ids, attention_mask=attn, position_ids=pos, past_key_values=cache,
                logits_to_keep=T, use_cache=True)
    return torch.cat([first, out.logits[:, :-1]], dim=1)


def response_logprobs(model, prompt_ids, response_ids, *, pad_id: int, temperature: float,
                      with_entropy: bool | str = False):
    """Per-token log-probs [B, T] (and entropies [B, T]) of the responses, logits / temperature.

    ``with_entropy``: False | True (differentiable) | "detached" (for logging only).
    The prompt's logits are never computed, and a prompt shared by several rows is encoded once
    (``response_logits``).
    """
    logits = response_logits(model, prompt_ids, response_ids, pad_id=pad_id).float()  # [B, T, V]
    lp = logprobs_from_logits(logits, response_ids, temperature=temperature)
    ent = None
    if with_entropy == "detached":
        with torch.no_grad():
            ent = token_entropy(logits.detach(), temperature=temperature)
    elif with_entropy:
        ent = token_entropy(logits, temperature=temperature)
    return lp, ent


def lockstep(cfg: RunConfig, dist: Dist) -> Dist | None:
    """``dist`` when forwards are collectives that every rank must make the same number of times
    (DeepSpeed on several ranks: ZeRO-3 gathers parameters per forward, ZeRO-1/2 reduce gradients
    per backward), else None."""
    return dist if dist.enabled and cfg.deepspeed.stage > 0 else None


def lockstep_slices(n: int, size: int, dist: Dist | None) -> list[slice | None]:
    """Micro-batch slices of ``n`` rows; with ``dist`` (see ``lockstep``) padded with None up to
    the largest count on any rank: a rank with fewer rows runs a stand-in pass for each None, so
    its collectives pair up with the other ranks' real ones instead of hanging."""
    out: list[slice | None] = [slice(s, s + size) for s in range(0, n, size)]
    if dist is not None and dist.enabled:
        most = int(dist.max(torch.tensor([len(out)], dtype=torch.long)).item())
        out += [None] * (most - len(out))
    return out


@torch.no_grad()
def batched_logprobs(model, prompt_ids, response_ids, *, pad_id, temperature, micro_batch_size, with_entropy=False,
                     dist: Dist | None = None):
    """``response_logprobs`` without gradients, in micro-batches; ``dist``: keep the number of
    forwards equal across ranks (``lockstep``)."""
    lps, ents = [], []
    for sl in lockstep_slices(len(prompt_ids), micro_batch_size, dist):
        if sl is None:  # stand-in: one pad token, result dropped
            response_logprobs(model, [[pad_id]], torch.tensor([[pad_id]]), pad_id=pad_id, temperature=temperature)
            continue
        lp, ent = response_logprobs(model, prompt_ids[sl], response_ids[sl], pad_id=pad_id,
                                    temperature=temperature, with_entropy=with_entropy)
        lps.append(lp)
        ents.append(ent)
    if not lps:  # no rows on this rank
        empty = torch.zeros((0, response_ids.shape[1]))
        return empty, (empty.clone() if with_entropy else None)
    return torch.cat(lps), (torch.cat(ents) if with_entropy else None)


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


def rollout_and_score(actor_module, tokenizer, samples: list[Sample], prompt_ids, reward_fn, cfg: RunConfig,
                      *, n: int, generator: torch.Generator, params: SamplingParams | None = None,
                      first_prompt_index: int = 0):
    """Sample ``n`` responses per prompt and score them; returns (Scored, timings).
    ``first_prompt_index``: the global position of ``samples[0]`` (see ``rollout_generator``)."""
    t0 = time.time()
    params = params or SamplingParams(
        max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, n=n, stop_strings=tuple(cfg.rollout.stop_strings))
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
        scores=torch.tensor(out.scores, dtype=torch.float32), reward=out)
    return scored, {"time/rollout": t1 - t0, "time/reward": t2 - t1}


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
    return m


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(module, tokenizer, samples: list[Sample], prompt_ids, reward_fn, cfg: RunConfig, dist: Dist,
             batch_size: int = 64) -> dict:
    """Greedy accuracy and mean score on (this rank's slice of) the test split, reduced across ranks."""
    mine = list(range(dist.rank, len(samples), dist.world_size))
    params = SamplingParams(max_new_tokens=cfg.eval.max_new_tokens, temperature=0.0, n=1,
                            stop_strings=tuple(cfg.rollout.stop_strings))
    correct = score = length = 0.0
    t0 = time.time()
    for s in range(0, len(mine), batch_size):
        idx = mine[s:s + batch_size]
        sc, _ = rollout_and_score(module, tokenizer, [samples[i] for i in idx], [prompt_ids[i] for i in idx],
                                  reward_fn, cfg, n=1, generator=torch.Generator().manual_seed(0), params=params)
        score += float(sc.scores.sum())
        c = sc.reward.info.get("correct")
        correct += float(sum(bool(x) for x in c)) if c is not None else float((sc.scores > 0).sum())
        length += float(sc.lengths.sum())
    tot = dist.sum(torch.tensor([correct, score, length, float(len(mine))], dtype=torch.float64))
    n = max(tot[3].item(), 1.0)
    return {"accuracy": tot[0].item() / n, "score": tot[1].item() / n, "length": tot[2].item() / n,
            "n": int(n), "time_s": time.time() - t0}


# --------------------------------------------------------------------------- checkpoints


def resume_dir(cfg: RunConfig) -> Path | None:
    """The checkpoint to resume from, per ``resume`` (auto | never | <run dir>)."""
    if cfg.resume == "never":
        return None
    src = cfg.run_dir if cfg.resume == "auto" else cfg.resume
    ckpt = latest_checkpoint(src)
    if ckpt is None and cfg.resume not in ("auto",):
        raise FileNotFoundError(f"resume={cfg.resume}: no complete checkpoint under {src}/checkpoints")
    return ckpt


def save(cfg: RunConfig, dist: Dist, step: int, actor, tokenizer, extra: dict | None = None,
         engines: dict | None = None) -> None:
    """Checkpoint ``step``: every rank takes part (gathering sharded weights, writing its ZeRO shard
    into the staging directory); rank 0 writes the HF policy and trainer.pt and completes it.

    ``engines``: other trained state saved like the actor, by name (PPO's critic, its moving
    reference): anything with ``state_dict`` (into trainer.pt under its name) and ``save_shards``
    (every rank's own part, into the checkpoint's ``<name>/`` folder). ``maybe_resume`` restores them.
    """
    engines = {"actor": actor, **(engines or {})}
    full = actor.full_state_dict()  # collective under ZeRO
    staging = dist.broadcast_object(staging_dir(cfg.run_dir, step) if dist.is_main else None)
    for name, engine in engines.items():
        engine.save_shards(staging / name)  # DeepSpeed: every rank's shard; LocalActor: nothing
    dist.barrier()
    state = {**{name: engine.state_dict() for name, engine in engines.items()}, **(extra or {})}
    if is_lora(actor.module):  # the HF policy holds the merged weights; trainer.pt the adapters
        full = merged_state_dict(full, actor.module.rltrain_lora_scaling)
    if dist.is_main:
        save_checkpoint(cfg.run_dir, step, trainer_state=state, keep=cfg.checkpoint.keep, staging=staging,
                        policy_writer=lambda d: save_hf(actor.module, tokenizer, d, state_dict=full))
    dist.barrier()


def maybe_resume(cfg: RunConfig, actor, engines: dict | None = None) -> tuple[int, dict]:
    """Load the latest complete checkpoint if any: (start step, trainer state). ``engines``: the
    same names and objects that ``save`` was given, restored like the actor."""
    ckpt = resume_dir(cfg)
    if ckpt is None:
        return 0, {}
    state = load_trainer_state(ckpt)
    for name, engine in {"actor": actor, **(engines or {})}.items():
        engine.load_state_dict(state[name])  # checks the shard layout before DeepSpeed reads shards
        engine.load_shards(ckpt / name)
    log.info("resumed from %s (step %d)", ckpt, state["step"])
    return int(state["step"]), state


def should_save(cfg: RunConfig, step: int, last: bool = False) -> bool:
    """After finishing step ``step`` (1-based count of completed steps); ``last``: training ends here."""
    every = cfg.checkpoint.every
    return (every > 0 and step % every == 0) or ((last or step == cfg.train.steps) and cfg.checkpoint.save_final)


class StepClock:
    """Which steps a loop runs: ``start .. train.steps``, cut short by ``train.time_budget_s``.

    With a budget, training ends after the step during which the summed step time (``time/step``;
    evaluation and checkpointing excluded) reaches it. A resumed run counts the time its earlier
    steps logged in metrics.jsonl. Rank 0's clock decides, so every rank stops at the same step.
    """

    def __init__(self, cfg: RunConfig, dist: Dist, start: int, logger=None):
        self.cfg, self.dist, self.step = cfg, dist, start
        self.budget = cfg.train.time_budget_s
        spent = _logged_step_time(cfg.run_dir, start) if self.budget > 0 and start > 0 and dist.is_main else 0.0
        self.spent = float(dist.broadcast_object(spent))
        if logger is not None:  # its ETA counts down the budget too
            logger.clock = self

    def steps(self) -> range:
        exhausted = 0 < self.budget <= self.spent
        return range(self.step, self.step if exhausted else self.cfg.train.steps)

    def finish(self, done: int, step_time: float) -> bool:
        """Record a finished step; True when it is the last one."""
        self.step, self.spent = done, self.spent + step_time
        last = done >= self.cfg.train.steps or 0 < self.budget <= self.spent
        return bool(self.dist.broadcast_object(last))


def _logged_step_time(run_dir: str, upto: int) -> float:
    path = Path(run_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return sum(r.get("time/step", 0.0) for r in rows if "event" not in r and r.get("step", 0) <= upto)


def end_step(cfg: RunConfig, ctx, dist: Dist, clock: StepClock, done: int, metrics: dict, *, logger, save,
             evaluate=None) -> bool:
    """The tail every loop shares after step ``done``: periodic evaluation (not on the last step,
    which ``final_eval`` covers), logging, checkpointing. ``save(step)`` writes a checkpoint;
    ``evaluate()`` returns held-out metrics (default: the actor's greedy accuracy); both are
    collective. Returns True after the last step."""
    last = clock.finish(done, metrics["time/step"])
    if cfg.eval.every and done % cfg.eval.every == 0 and not last:
        ev = evaluate() if evaluate else policy_eval(ctx, cfg, dist)
        metrics.update({f"eval/{k}": v for k, v in ev.items()})
    if logger:
        logger.log(done, metrics)
    if should_save(cfg, done, last):
        save(done)
    return last


def policy_eval(ctx, cfg: RunConfig, dist: Dist) -> dict:
    """Greedy held-out evaluation of the actor (parameters gathered once under ZeRO-3)."""
    with ctx.actor.gathered():
        return evaluate(ctx.actor.module, ctx.tok, ctx.test, ctx.test_ids, ctx.reward, cfg, dist)


def entropy_stats(ent: torch.Tensor, mask: torch.Tensor, dist: Dist) -> dict:
    """Mean entropy, fraction of tokens below 0.01 and the 80th percentile, over the batch."""
    vals = dist.gather_cat(ent[mask.bool()].float())
    if vals.numel() == 0:
        return {}
    return {"actor/entropy": vals.mean().item(), "actor/entropy_lt_0.01": (vals < 0.01).float().mean().item(),
            "actor/entropy_p80": torch.quantile(vals, 0.8).item()}


def global_count(x: float, dist: Dist) -> float:
    return dist.sum(torch.tensor([x], dtype=torch.float64)).item()


def chunks(n: int, size: int):
    """Index ranges of micro-batches."""
    return [range(s, min(n, s + size)) for s in range(0, n, size)]


def finite_or_raise(loss: torch.Tensor, step: int) -> None:
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"non-finite loss at step {step}; lower train.lr or check the reward")


def initial_eval(cfg: RunConfig, ctx, dist: Dist, logger, start: int) -> dict | None:
    """Greedy held-out evaluation before training (or, on resume, the one logged back then)."""
    if start > 0:
        path = Path(cfg.run_dir) / "metrics.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            row = json.loads(line)
            if row.get("event") == "eval" and row.get("step") == 0:
                return {k: v for k, v in row.items() if k not in ("event", "step")}
        return None
    if not cfg.eval.at_start:
        return None
    before = policy_eval(ctx, cfg, dist)
    if logger:
        logger.event(0, "eval", before)
    return before


def final_eval(cfg: RunConfig, ctx, dist: Dist, logger, before: dict | None, step: int | None = None) -> dict:
    """Greedy held-out evaluation after training (after ``step``; default ``train.steps``), the
    summary table, and the run's result."""
    after = policy_eval(ctx, cfg, dist)
    if logger:
        logger.event(cfg.train.steps if step is None else step, "eval", after)
        fmt = lambda d, k, f: f.format(d[k]) if d else "-"  # noqa: E731
        logger.summary([("held-out accuracy (greedy)", fmt(before, "accuracy", "{:.1%}"), f"{after['accuracy']:.1%}"),
                        ("mean response length", fmt(before, "length", "{:.1f}"), f"{after['length']:.1f}")])
        logger.close()
    return {"eval_before": before, "eval_after": after, "run_dir": cfg.run_dir}
