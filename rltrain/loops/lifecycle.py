"""The run lifecycle every loop shares: held-out evaluation (greedy, or sampled with pass@k),
checkpoints and resume, the step clock, the end-of-step tail, and token-weighted metrics reduced
across ranks."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rltrain.algos import passk
from rltrain.config import EvalConfig, RunConfig
from rltrain.engine.checkpoint import (latest_checkpoint, load_trainer_state, save_checkpoint, save_hf, staging_dir,
                                      tensor_bytes)
from rltrain.engine.dist import Dist
from rltrain.engine.lora import is_lora, merged_state_dict
from rltrain.loops import eval_cache, setup
from rltrain.loops.episodes import rollout_and_score
from rltrain.report import progress
from rltrain.report.logger import RunLogger
from rltrain.report.samples import eval_rows
from rltrain.report.runs import sampled_eval_keys
from rltrain.rollout import SamplingParams
from rltrain.types import Sample

log = logging.getLogger(__name__)


class Metrics:
    """Token-weighted metric sums, reduced across ranks at the end of a step. The ranks agree on
    the names once in ``reduce`` (a rank that logged none of a name contributes weight 0)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, name: str, value: float, weight: float = 1.0) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value) * weight
        self.weights[name] = self.weights.get(name, 0.0) + weight

    def reduce(self, dist: Dist) -> dict[str, float]:
        names = sorted(set().union(*dist.gather_objects(sorted(self.sums))))
        t = torch.tensor([[self.sums.get(n, 0.0), self.weights.get(n, 0.0)] for n in names], dtype=torch.float64)
        t = dist.sum(t) if len(names) else t
        return {n: (t[i, 0] / t[i, 1]).item() if t[i, 1] > 0 else 0.0 for i, n in enumerate(names)}


@dataclass
class TrainState:
    """Everything a resumed run needs besides the engines (weights, optimizer, ZeRO shards) and the
    RNG states: saved whole in trainer.pt under ``train_state`` by ``save``, returned by ``resume``.

    The prompt order is a function of (seed, step), so the data position is ``step``.
    """

    step: int = 0
    """Completed steps."""
    spent_s: float = 0.0
    """Summed step time so far (``train.time_budget_s`` counts it down across resumes)."""
    eval_before: dict | None = None
    """The held-out evaluation before training (the summary's "before" column)."""
    loop: dict = field(default_factory=dict)
    """The loop's own state: PPO's KL coefficient and value normaliser, SPO-tree's edge replay."""

    def state_dict(self) -> dict:
        """For trainer.pt (not ``dataclasses.asdict``: that would turn the loop's objects, such as
        SPO's replayed edges, into dicts)."""
        return {"step": self.step, "spent_s": self.spent_s, "eval_before": self.eval_before, "loop": self.loop}


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(module, tokenizer, samples: list[Sample], prompt_ids, reward_fn, cfg: RunConfig, dist: Dist,
             batch_size: int = 64, keep: list | None = None, sampler=None) -> dict:
    """Held-out evaluation on (this rank's share of) the test split, reduced across ranks.

    ``eval.n`` answers per question at ``eval.temperature`` / ``eval.top_p`` (default: one greedy
    answer). A sample is correct when the reward's ``info["correct"]`` says so, else when its score
    is > 0. Returns ``accuracy``, ``score`` and ``length`` (means over every sample: with n > 1,
    ``accuracy`` is mean@n), ``n`` (questions) and ``time_s``; with n > 1 also ``mean@n`` and, for each
    k in ``eval.k``, ``pass@k`` (unbiased estimator) and ``maj@k`` (majority vote over the first k
    samples' ``info["extracted"]`` answers; absent for a reward that reports no extracted answer),
    each averaged over questions (``algos.passk``).

    Sampling: the generator is seeded with ``eval.seed`` and each question's samples are streams
    seeded by its index in the test split (``first_prompt_index``), so a sampled evaluation is the
    same every time it runs and on any number of ranks; that needs each batch to hold consecutive
    questions, hence contiguous blocks per rank. Greedy keeps its strided split (what the cached
    base-model results were computed with). ``batch_size``: sequences per generate call.

    ``keep``: on rank 0, the first ``log.eval_samples`` answers are appended to it as samples.jsonl
    rows (``report.samples.eval_rows``). ``sampler``: the vLLM engine of ``rollout.engine=vllm``, holding
    ``module``'s pushed weights, to generate with instead of rltrain's engine (docs/vllm.md).
    """
    e = cfg.eval
    ks = sorted(set(e.k)) if e.n > 1 else []
    sampled = e.temperature > 0
    N, R, W = len(samples), dist.rank, dist.world_size
    mine = list(range(R * N // W, (R + 1) * N // W)) if sampled else list(range(R, N, W))
    params = SamplingParams(max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p, n=e.n,
                            stop_strings=tuple(cfg.rollout.stop_strings))
    per_call = max(1, batch_size // e.n)  # questions per generate call
    # [correct, score, length] summed over samples, [questions], then _sampled_sums' entries
    totals = torch.zeros(5 + 2 * len(ks), dtype=torch.float64)
    tool_calls = torch.zeros(1, dtype=torch.float64)  # env: episodes with a valid tool call
    t0 = time.time()
    with progress.phase("eval", total=len(mine), unit="questions") as bar:
        for s in range(0, len(mine), per_call):
            idx = mine[s:s + per_call]
            sc, _ = rollout_and_score(module, tokenizer, [samples[i] for i in idx], [prompt_ids[i] for i in idx],
                                      reward_fn, cfg, n=e.n, generator=torch.Generator().manual_seed(e.seed),
                                      params=params, first_prompt_index=idx[0] if sampled else 0, sampler=sampler)
            c = sc.reward.info.get("correct")
            ok = [bool(x) for x in c] if c is not None else (sc.scores > 0).tolist()  # [len(idx) * n]
            answers = sc.reward.info.get("extracted")
            if keep is not None and dist.is_main and len(keep) < cfg.log.eval_samples:
                keep += eval_rows(sc, ok, e.n, limit=cfg.log.eval_samples - len(keep))
            totals[:4] += torch.tensor([sum(ok), float(sc.scores.sum()), float(sc.lengths.sum()), len(idx)],
                                       dtype=torch.float64)
            if e.n > 1:
                totals[4:] += _sampled_sums(ok, answers, e.n, ks)
            tool_calls += sum(sc.reward.info.get("env/called_tool", []))
            bar.advance(len(idx))
    tot = dist.sum(totals)
    questions = max(tot[3].item(), 1.0)
    seqs = questions * e.n
    out = {"accuracy": tot[0].item() / seqs, "score": tot[1].item() / seqs, "length": tot[2].item() / seqs,
           "n": int(questions), "time_s": time.time() - t0}
    if cfg.env.name != "single_turn":  # multi-turn episodes (docs/environments.md)
        out["tool_call_rate"] = dist.sum(tool_calls)[0].item() / seqs
    if e.n > 1:
        out[f"mean@{e.n}"] = out["accuracy"]
        out.update({f"pass@{k}": tot[5 + j].item() / questions for j, k in enumerate(ks)})
        if tot[4].item() == tot[3].item():  # every question had the reward's extracted answers
            out.update({f"maj@{k}": tot[5 + len(ks) + j].item() / questions for j, k in enumerate(ks)})
    return out


def _sampled_sums(ok: list[bool], answers: list | None, n: int, ks: list[int]) -> torch.Tensor:
    """Per-question pass@k and maj@k of one batch, summed over its questions: [questions with
    answers, pass@k for each k, maj@k for each k]. Rows q*n .. q*n+n-1 answer question q."""
    out = torch.zeros(1 + 2 * len(ks), dtype=torch.float64)
    for q in range(len(ok) // n):
        rows = slice(q * n, (q + 1) * n)
        c = sum(ok[rows])
        for j, k in enumerate(ks):
            out[1 + j] += passk.pass_at_k(n, c, k)
        if answers is not None:
            out[0] += 1
            for j, k in enumerate(ks):
                out[1 + len(ks) + j] += float(passk.majority_vote(answers[rows][:k], ok[rows][:k]))
    return out


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


def save(cfg: RunConfig, dist: Dist, ts: TrainState, actor, tokenizer, engines: dict | None = None) -> None:
    """Checkpoint step ``ts.step``: every rank takes part (gathering sharded weights, writing its ZeRO
    shard into the staging directory); rank 0 writes the HF policy and trainer.pt and completes it.

    ``engines``: other trained state saved like the actor, by name (PPO's critic, its moving
    reference): anything with ``state_dict`` (into trainer.pt under its name) and ``save_shards``
    (every rank's own part, into the checkpoint's ``<name>/`` folder). ``resume`` restores them.
    """
    engines = {"actor": actor, **(engines or {})}
    full = actor.full_state_dict()  # collective under ZeRO
    staging = dist.broadcast_object(staging_dir(cfg.run_dir, ts.step) if dist.is_main else None)
    for name, engine in engines.items():
        engine.save_shards(staging / name)  # DeepSpeed: every rank's shard; LocalActor: nothing
    dist.barrier()
    state = {**{name: engine.state_dict() for name, engine in engines.items()}, "train_state": ts.state_dict()}
    if is_lora(actor.module):  # the HF policy holds the merged weights; trainer.pt the adapters
        full = merged_state_dict(full, actor.module.rltrain_lora_scaling)
    if dist.is_main:
        save_checkpoint(cfg.run_dir, ts.step, trainer_state=state, keep=cfg.checkpoint.keep, staging=staging,
                        policy_writer=lambda d: save_hf(actor.module, tokenizer, d, state_dict=full),
                        policy_bytes=tensor_bytes(full))
    dist.barrier()


def resume(cfg: RunConfig, actor, engines: dict | None = None) -> TrainState:
    """Load the latest complete checkpoint if any and return its TrainState (a fresh one without).
    ``engines``: the same names and objects that ``save`` was given, restored like the actor."""
    ckpt = resume_dir(cfg)
    if ckpt is None:
        return TrainState()
    state = load_trainer_state(ckpt)
    for name, engine in {"actor": actor, **(engines or {})}.items():
        engine.load_state_dict(state[name])  # checks the shard layout before DeepSpeed reads shards
        engine.load_shards(ckpt / name)
    ts = TrainState(**state["train_state"]) if "train_state" in state else _older_checkpoint(cfg, state)
    log.info("resumed from %s (step %d)", ckpt, ts.step)
    return ts


def _older_checkpoint(cfg: RunConfig, state: dict) -> TrainState:
    """A checkpoint written before TrainState: its step and loop extras in trainer.pt, the step time
    and the evaluation before training only in metrics.jsonl."""
    step = int(state["step"])
    path = Path(cfg.run_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    spent = sum(r.get("time/step", 0.0) for r in rows if "event" not in r and r.get("step", 0) <= step)
    before = next(({k: v for k, v in r.items() if k not in ("event", "step")} for r in rows
                   if r.get("event") == "eval" and r.get("step") == 0), None)
    loop = {k: v for k, v in state.items() if k in ("kl_coef", "value_norm", "replay")}
    return TrainState(step=step, spent_s=spent, eval_before=before, loop=loop)


def run_logger(cfg: RunConfig, dist: Dist, ts: TrainState, title: str) -> RunLogger | None:
    """Rank 0's RunLogger of the run (``log.*``: console, trackers, samples), resuming at ``ts.step``;
    None on the other ranks."""
    if not dist.is_main:
        return None
    lg = cfg.log
    return RunLogger(cfg.run_dir, cfg.train.steps, console=lg.console, trackers=lg.trackers,
                     config=dataclasses.asdict(cfg), project=lg.project, run_name=lg.run_name,
                     samples_max_mb=lg.samples_max_mb, start_step=ts.step, title=title)


def start(cfg: RunConfig, ctx, dist: Dist, title: str, *, engines: dict | None = None,
          evaluate=None) -> tuple[TrainState, RunLogger | None, dict | None, StepClock]:
    """The preamble every loop runs before its ``for step in clock.steps()``: resume (the TrainState;
    ``engines`` are checkpointed besides the actor), the vLLM engine of ``rollout.engine=vllm`` (with the
    resumed weights), rank 0's RunLogger, the held-out evaluation before
    training (``initial_eval``; ``evaluate``: the loop's own) and the step clock."""
    ts = resume(cfg, ctx.actor, engines)
    setup.start_sampler(cfg, ctx, dist)  # rollout.engine=vllm: started with the (resumed) policy's weights
    logger = run_logger(cfg, dist, ts, title)
    before = initial_eval(cfg, ctx, dist, logger, ts, evaluate=evaluate)
    return ts, logger, before, StepClock(cfg, dist, ts, logger)


def should_save(cfg: RunConfig, step: int, last: bool = False) -> bool:
    """After finishing step ``step`` (1-based count of completed steps); ``last``: training ends here."""
    every = cfg.checkpoint.every
    return (every > 0 and step % every == 0) or ((last or step == cfg.train.steps) and cfg.checkpoint.save_final)


class StepClock:
    """Which steps a loop runs: ``ts.step .. train.steps``, cut short by ``train.time_budget_s``.

    With a budget, training ends after the step during which the summed step time (``time/step``;
    evaluation and checkpointing excluded) reaches it; a resumed run counts its earlier steps'
    time (``TrainState.spent_s``). Rank 0's clock decides, so every rank stops at the same step.
    ``finish`` advances the TrainState that ``save`` writes.
    """

    def __init__(self, cfg: RunConfig, dist: Dist, ts: TrainState, logger=None):
        self.cfg, self.dist, self.ts = cfg, dist, ts
        self.budget = cfg.train.time_budget_s
        ts.spent_s = float(dist.broadcast_object(ts.spent_s))
        if logger is not None:  # its ETA counts down the budget too
            logger.clock = self

    @property
    def step(self) -> int:
        return self.ts.step

    @property
    def spent(self) -> float:
        return self.ts.spent_s

    def steps(self) -> range:
        exhausted = 0 < self.budget <= self.spent
        return range(self.step, self.step if exhausted else self.cfg.train.steps)

    def finish(self, done: int, step_time: float) -> bool:
        """Record a finished step; True when it is the last one."""
        self.ts.step, self.ts.spent_s = done, self.ts.spent_s + step_time
        last = done >= self.cfg.train.steps or 0 < self.budget <= self.spent
        return bool(self.dist.broadcast_object(last))


def end_step(cfg: RunConfig, ctx, dist: Dist, clock: StepClock, done: int, metrics: dict, *, logger, save,
             evaluate=None) -> bool:
    """The tail every loop shares after step ``done``: periodic evaluation (not on the last step,
    which ``final_eval`` covers), logging, checkpointing. ``save()`` writes a checkpoint of the
    clock's TrainState;
    ``evaluate()`` returns held-out metrics (default: ``policy_eval``); both are
    collective. Returns True after the last step."""
    last = clock.finish(done, metrics["time/step"])
    answers: list = []
    if cfg.eval.every and done % cfg.eval.every == 0 and not last:
        ev = evaluate() if evaluate else policy_eval(ctx, cfg, dist, keep=answers)
        metrics.update({f"eval/{k}": v for k, v in ev.items()})
    if logger:
        logger.log(done, metrics)
        logger.samples(done, "eval", answers)
    if should_save(cfg, done, last):
        save()
    return last


def policy_eval(ctx, cfg: RunConfig, dist: Dist, keep: list | None = None) -> dict:
    """Held-out evaluation of the actor (``evaluate``; parameters gathered once under ZeRO-3), through
    the vLLM engine with ``rollout.engine=vllm``; ``keep`` collects answers for samples.jsonl."""
    with setup.rollout_gathered(ctx):
        return evaluate(ctx.actor.module, ctx.tok, ctx.test, ctx.test_ids, ctx.reward, cfg, dist, keep=keep,
                        sampler=ctx.sampler)


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


def initial_eval(cfg: RunConfig, ctx, dist: Dist, logger, ts: TrainState, evaluate=None) -> dict | None:
    """Held-out evaluation before training, kept in the TrainState (on resume: the one from then).
    ``evaluate()``: the loop's own evaluation (default: the untrained policy's, through the cache)."""
    if ts.step > 0 or not cfg.eval.at_start:
        return ts.eval_before
    answers: list = []
    ts.eval_before = evaluate() if evaluate else cached_base_eval(ctx, cfg, dist, keep=answers)
    if logger:
        logger.event(0, "eval", ts.eval_before)
        logger.samples(0, "eval", answers)
    return ts.eval_before


def cached_base_eval(ctx, cfg: RunConfig, dist: Dist, keep: list | None = None) -> dict:
    """``policy_eval`` of the untrained policy through ``loops.eval_cache`` (``eval.cache_base``):
    every rank must hit for the cached result to be used (a rank that misses would evaluate, and
    its collectives would wait for the others). ZeRO-3 shards the weights: not cached there. A
    cached result has no answers for ``keep`` (samples.jsonl)."""
    if not cfg.eval.cache_base or cfg.deepspeed.stage >= 3:
        return policy_eval(ctx, cfg, dist, keep=keep)
    settings = {"eval": cfg.eval, "stop_strings": list(cfg.rollout.stop_strings), "reward": cfg.reward,
                "world_size": dist.world_size, "threads": torch.get_num_threads(), "dtype": cfg.model.dtype}
    if cfg.env.name != "single_turn":  # multi-turn evaluation: the environment decides what is played
        settings["env"] = cfg.env
    if cfg.rollout.engine == "vllm":  # evaluated by vLLM (another sampler, other kernels)
        settings["engine"] = "vllm"
    key = eval_cache.eval_key(ctx.actor.module, ctx.test, ctx.test_ids, settings=settings)
    hit = eval_cache.load(key)
    if dist.sum(torch.tensor([float(hit is not None)])).item() == dist.world_size:
        log.info("initial evaluation: the untrained model's result on these %d questions is cached (eval_cache "
                 "key %s; eval.cache_base=false recomputes it)", hit.get("n", 0), key[:12])
        return {**hit, "cached": 1}
    before = policy_eval(ctx, cfg, dist, keep=keep)
    if dist.is_main:
        eval_cache.store(key, before, source=str(cfg.run_dir))
    return before


def mismatch_rows(run_dir: str) -> list[tuple[str, str, str]]:
    """Summary rows for the rollout↔trainer mismatch: first and last logged step."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    # Steps that measured something: a step whose rows were all skipped (zero advantage) has no pair.
    steps = [r for r in rows if "mismatch/abs_dlogp_mean" in r and r.get("mismatch/tokens", 1) > 0]
    if not steps:
        return [("rollout↔trainer mismatch", "-", "no token measured")] if any(
            "mismatch/tokens" in r for r in rows) else []
    a, b = steps[0], steps[-1]
    return [("rollout↔trainer mean |Δlogp| (first, last step)", f"{a['mismatch/abs_dlogp_mean']:.2e}",
             f"{b['mismatch/abs_dlogp_mean']:.2e}"),
            ("rollout↔trainer max ratio (first, last step)", f"{a['mismatch/ratio_max']:.3f}",
             f"{b['mismatch/ratio_max']:.3f}")]


def eval_summary_rows(e: EvalConfig, before: dict | None, after: dict) -> list[tuple[str, str, str]]:
    """Summary-table rows (metric, before, after) of the held-out evaluation: accuracy, labelled
    with how it was decoded (greedy, or mean@n at the sampling settings), then pass@k and maj@k."""
    fmt = lambda d, k: f"{d[k]:.1%}" if d and k in d else "-"  # noqa: E731
    how = "greedy" if e.temperature == 0 else f"mean@{e.n}, T={e.temperature:g}" + (
        f", top-p={e.top_p:g}" if e.top_p < 1 else "")
    rows = [(f"held-out accuracy ({how})", fmt(before, "accuracy"), fmt(after, "accuracy"))]
    return rows + [(f"held-out {k}", fmt(before, k), fmt(after, k)) for k in sampled_eval_keys(after)
                   if not k.startswith("mean@")]  # mean@n is the accuracy row


def final_eval(cfg: RunConfig, ctx, dist: Dist, logger, before: dict | None, step: int | None = None) -> dict:
    """Held-out evaluation after training (after ``step``; default ``train.steps``), the summary
    table, and the run's result."""
    answers: list = []
    after = policy_eval(ctx, cfg, dist, keep=answers)
    if logger:
        logger.event(cfg.train.steps if step is None else step, "eval", after)
        logger.samples(cfg.train.steps if step is None else step, "eval", answers)
        fmt = lambda d, k, f: f.format(d[k]) if d else "-"  # noqa: E731
        logger.summary(eval_summary_rows(cfg.eval, before, after)
                       + [("mean response length", fmt(before, "length", "{:.1f}"), f"{after['length']:.1f}")]
                       + mismatch_rows(cfg.run_dir))
        logger.close()
    setup.close(ctx)
    return {"eval_before": before, "eval_after": after, "run_dir": cfg.run_dir}
