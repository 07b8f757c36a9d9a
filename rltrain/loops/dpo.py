"""DPO, IPO and conservative DPO (offline, on preference pairs) and iterative DPO (pairs built
from the policy's own samples), as one explicit loop.

Papers: Rafailov et al. 2023 (DPO); Azar et al. 2023 (IPO); Mitchell 2023 (cDPO); Xu et al. 2024
("Is DPO Superior to PPO", DPO-Iter). Reference implementation: eric-mitchell/
direct-preference-optimization (docs/algorithms.md §1). The loss is ``rltrain.algos.dpo.dpo_loss``.

Offline, per step: ``train.prompts_per_step`` pairs (global; each rank takes its slice of a seeded
per-epoch permutation) → for every micro-batch one concatenated forward of its chosen and
rejected sequences (``micro_batch_size`` sequences = half as many pairs) → summed response
log-probs (prompt masked, EOS counted) → ``dpo_loss`` against the reference → the mean over the
step's pairs (global count, so micro-batches and ranks do not change it) → one optimizer step.

Iterative (``algo.iterative=true``), ``algo.rounds`` rounds of ``train.steps / algo.rounds`` steps.
At the start of round r, for the prompts of each of its steps, sample ``train.samples_per_prompt``
responses with the current policy, score them with the configured reward, pair the best against
the worst (first of equals; prompts whose responses all score the same are skipped), and compute
the pairs' reference log-probs; then train the round's steps, step j on the pairs of its own
prompts (so one pass over the round's pairs). The reference is the initial policy
(``algo.reference=initial``, default) or the policy at the start of the round
(``previous_iterate``). Each round's pairs and reference log-probs are saved in the run directory
(``iterative/``), so a run resumed mid-round trains on exactly the pairs it sampled. With
``rollout.engine=vllm`` the colocated vLLM engine samples the rounds (and the evaluations), the weights
pushed after every optimizer step (docs/vllm.md).

Reference log-probs: offline with ``algo.cache_ref_logps=true`` (default) they are computed once
by the initial policy before training, for every pair the run will use, and cached on disk
(``algo.ref_cache_dir``, default the run directory, keyed by model and its weight files, data and lengths); the
reference model is loaded only to fill the cache and not kept. Otherwise a frozen reference model
(``setup.build_reference``) forwards each batch.
``algo.reference_free=true`` uses a uniform reference (log-ratio 0) and loads none.

Metrics (all reduced across ranks): dpo/loss, the implicit rewards β·(log π − log π_ref) of chosen
and rejected, their margin, the preference accuracy (chosen reward > rejected), and the policy's
summed log-probs of chosen and rejected.

Deliberate departures:
- The optimizer is AdamW with train.lr and friends, like every loop here; the reference code used
  RMSprop (lr 5e-7, 150 warm-up steps).
- Sampled responses of iterative DPO are trained on exactly as generated: a truncated response gets
  no EOS appended (the text pairs of offline DPO do).
- Log-probs are at temperature 1 even when iterative DPO samples at another temperature: the DPO
  objective is about π itself, not the sampling distribution.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rltrain.algos.dpo import dpo_loss
from rltrain.config import ConfigError, RunConfig
from rltrain.data import PREFERENCE_DATASETS
from rltrain.engine.dist import Dist
from rltrain.engine.model import resolve_path
from rltrain.loops import episodes, lifecycle, setup
from rltrain.config import option_kwargs
from rltrain.rollout import forward
from rltrain.loops.pairs import Encoded, batched_pair_logps, pair_logps, stand_in_pair
from rltrain.loops.lifecycle import Metrics
from rltrain.report.samples import rollout_rows


# --------------------------------------------------------------------------- setup


@dataclass
class ReferenceLogps:
    """Cached reference (chosen, rejected) log-probs ``[n, 2]`` of offline DPO's pairs (NaN where a
    pair is never used), or None where a reference model forwards each batch or there is none."""

    train: torch.Tensor | None = None
    test: torch.Tensor | None = None


def build_context(cfg: RunConfig, dist: Dist) -> tuple[setup.Context, ReferenceLogps]:
    """The shared context (the pairs, or prompts for iterative DPO) and the cached reference
    log-probs. The reference model is kept (``ctx.ref``) only when it forwards batches: iterative
    DPO against the initial policy, or offline DPO with ``algo.cache_ref_logps=false``."""
    a, t = cfg.algo, cfg.train
    is_pref = cfg.data.name in PREFERENCE_DATASETS
    if not a.iterative and not is_pref:
        raise ConfigError(
            f"algo=dpo trains on preference pairs but data={cfg.data.name} has none: use "
            f"data=synthetic_prefs or data=preference (data.path=...), or algo.iterative=true to build "
            "pairs from the policy's own samples")
    keep_ref = not a.reference_free and (a.reference == "initial" if a.iterative else not a.cache_ref_logps)
    ctx = setup.Context(cfg, dist, total_optimizer_steps=t.steps, with_reference=keep_ref,
                        data="prompts" if a.iterative else "pairs")
    # Greedy generation eval: prompt datasets, and preference sets whose pairs carry an answer.
    if is_pref and not all(s.answer for s in ctx.test):
        ctx.test, ctx.test_ids = [], []
    if a.iterative or a.reference_free or not a.cache_ref_logps:
        return ctx, ReferenceLogps()
    used = sorted({i for s in range(t.steps) for i in ctx.order.indices(s, t.prompts_per_step)})
    reference = functools.cache(lambda: setup.build_reference(cfg, dist))  # loaded only if the cache misses
    return ctx, ReferenceLogps(
        train=cached_reference_logps(cfg, dist, reference, ctx.train, used, ctx.pad, "train"),
        test=cached_reference_logps(cfg, dist, reference, ctx.test_pairs, list(range(len(ctx.test_pairs))),
                                    ctx.pad, "test"))


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt")


def weight_files_stamp(directory: str | None) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of a local model directory's weight files; [] for a hub id or None.
    Weights rewritten in place under the same path change the stamp, so a shared
    ``algo.ref_cache_dir`` never serves the old model's log-probs."""
    if not directory or not Path(directory).is_dir():
        return []
    files = sorted({f for pat in WEIGHT_FILES for f in Path(directory).glob(pat)})
    return [(f.name, (st := f.stat()).st_size, st.st_mtime_ns) for f in files]


def cache_key(cfg: RunConfig, split: str) -> str:
    """What the reference log-probs of a split depend on: model (and its weight files), data,
    rendering, lengths."""
    m, a = cfg.model, cfg.algo
    model = {"name": m.name, "path": m.path, "dtype": m.dtype,
             "weights": weight_files_stamp(resolve_path(m.name, m.path))}
    if m.name == "tiny":
        model.update(seed=cfg.seed, hidden=m.tiny_hidden_size, layers=m.tiny_layers)
    key = {"model": model, "data": {"name": cfg.data.name, **option_kwargs(cfg.data)},
           "system_prompt": cfg.data.system_prompt, "chat": cfg.data.use_chat_template,
           "lengths": [a.max_length, a.max_prompt_length, a.truncation], "split": split}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_reference_logps(cfg: RunConfig, dist: Dist, reference, pairs: list[Encoded], needed: list[int], pad: int,
                           split: str) -> torch.Tensor:
    """``[n, 2]`` reference (chosen, rejected) log-probs, NaN where not needed; computes the missing
    ones (spread over ranks) with ``reference()`` (a callable returning the reference model) and
    updates the on-disk cache."""
    path = Path(cfg.algo.ref_cache_dir or cfg.run_dir) / "ref_logps" / f"{split}-{cache_key(cfg, split)}.pt"
    table = torch.full((len(pairs), 2), float("nan"), dtype=torch.float32)
    if path.exists():
        saved = torch.load(path, map_location="cpu")
        if saved.shape == table.shape:
            table = saved
    missing = [i for i in needed if math.isnan(table[i, 0].item())]
    if not int(lifecycle.global_count(float(len(missing)), dist)):
        return table
    mine = missing[dist.rank::dist.world_size]
    vals = batched_pair_logps(reference(), [pairs[i] for i in mine], pad_id=pad,
                              micro_batch_size=cfg.train.micro_batch_size)  # [k, 2]
    idx = dist.gather_cat(torch.tensor(mine, dtype=torch.long))
    table[idx] = dist.gather_cat(vals.float().reshape(-1)).view(-1, 2)
    if dist.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        torch.save(table, tmp)
        tmp.rename(path)
    dist.barrier()
    return table


# --------------------------------------------------------------------------- one optimizer step


def dpo_step(ctx: setup.Context, cfg: RunConfig, dist: Dist, step: int, pairs: list[Encoded],
             ref_logps: torch.Tensor | None) -> dict:
    """One optimizer step on this rank's pairs; ``ref_logps`` [len(pairs), 2] or None (reference
    model, or reference-free)."""
    a = cfg.algo
    n_pairs = lifecycle.global_count(float(len(pairs)), dist)
    if n_pairs == 0:
        return {"dpo/pairs": 0.0}
    m = Metrics()
    per = max(1, cfg.train.micro_batch_size // 2)  # chosen + rejected = 2 sequences per pair
    # Under DeepSpeed on several ranks every rank makes the same number of passes (iterative DPO's
    # pairs per rank differ): a rank out of pairs runs zero-weight stand-in passes.
    for sl in forward.lockstep_slices(len(pairs), per, ctx.actor.collective):
        part = [stand_in_pair(ctx.pad)] if sl is None else pairs[sl]
        pol_c, pol_r = pair_logps(ctx.actor.module, part, pad_id=ctx.pad)  # [k], [k]
        if ref_logps is not None:
            ref_c, ref_r = (torch.zeros(1), torch.zeros(1)) if sl is None else (ref_logps[sl, 0], ref_logps[sl, 1])
        elif ctx.ref is not None:
            with torch.no_grad():
                ref_c, ref_r = pair_logps(ctx.ref, part, pad_id=ctx.pad)
        else:  # reference-free
            ref_c = ref_r = torch.zeros(len(part))
        losses, rew_c, rew_r = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=a.beta, loss_type=a.loss_type,
                                        label_smoothing=a.label_smoothing, reference_free=a.reference_free)
        loss = losses.sum() / n_pairs  # mean over the step's pairs on all ranks
        lifecycle.finite_or_raise(loss, step)
        ctx.actor.backward(loss if sl is not None else loss * 0.0)
        k = float(len(part)) if sl is not None else 0.0  # stand-ins log the same names, with weight 0
        m.add("dpo/loss", losses.mean().item(), k)
        m.add("rewards/chosen", rew_c.mean().item(), k)
        m.add("rewards/rejected", rew_r.mean().item(), k)
        m.add("rewards/margin", (rew_c - rew_r).mean().item(), k)
        m.add("rewards/accuracy", (rew_c > rew_r).float().mean().item(), k)
        m.add("logps/chosen", pol_c.mean().item(), k)
        m.add("logps/rejected", pol_r.mean().item(), k)
    m.add("actor/grad_norm", ctx.actor.step())
    out = m.reduce(dist)
    out["dpo/pairs"] = n_pairs
    out["actor/lr"] = ctx.actor.lr
    return out


@torch.no_grad()
def preference_eval(ctx: setup.Context, cfg: RunConfig, dist: Dist, ref_test: torch.Tensor | None) -> dict:
    """Implicit-reward accuracy and margin of the current policy on the held-out pairs."""
    mine = list(range(dist.rank, len(ctx.test_pairs), dist.world_size))
    pol = batched_pair_logps(ctx.actor.module, [ctx.test_pairs[i] for i in mine], pad_id=ctx.pad,
                             micro_batch_size=cfg.train.micro_batch_size)  # [k, 2]
    if ref_test is not None:
        ref = ref_test[mine]
    elif ctx.ref is not None:
        ref = batched_pair_logps(ctx.ref, [ctx.test_pairs[i] for i in mine], pad_id=ctx.pad,
                                 micro_batch_size=cfg.train.micro_batch_size)
    else:
        ref = torch.zeros_like(pol)
    margin = cfg.algo.beta * ((pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1]))  # [k]
    tot = dist.sum(torch.tensor([float((margin > 0).sum()), float(margin.sum()), float(len(mine))],
                                dtype=torch.float64))
    n = max(tot[2].item(), 1.0)
    return {"pref_accuracy": tot[0].item() / n, "pref_margin": tot[1].item() / n, "pref_n": int(tot[2].item())}


# --------------------------------------------------------------------------- iterative DPO rounds


@dataclass
class Round:
    """One round of iterative DPO on one rank: its pairs, their reference log-probs, the step (within
    the round) each pair belongs to, and the round's sampling metrics."""

    index: int
    pairs: list[Encoded]
    ref_logps: torch.Tensor  # [n, 2]
    step_of: list[int]
    metrics: dict
    samples: dict = field(default_factory=dict)  # step in the round → samples.jsonl rows (not saved with the round)


def build_round(ctx: setup.Context, cfg: RunConfig, dist: Dist, r: int) -> Round:
    """Sample, score and pair round ``r`` (or load it from the run directory)."""
    path = Path(cfg.run_dir) / "iterative" / f"round_{r:03d}.rank{dist.rank}.pt"
    if lifecycle.global_count(float(path.exists()), dist) == dist.world_size:  # every rank saved it
        saved = torch.load(path, map_location="cpu", weights_only=False)
        return Round(r, [Encoded(*p) for p in saved["pairs"]], saved["ref_logps"], saved["step_of"],
                     saved["metrics"])
    a, t = cfg.algo, cfg.train
    K, spr = t.samples_per_prompt, t.steps // a.rounds
    pairs, step_of, sums, samples, t0 = [], [], {}, {}, time.time()
    for j in range(spr):
        step = r * spr + j
        idx, first = episodes.rank_slice(ctx.order, step, t.prompts_per_step, dist)
        with setup.rollout_gathered(ctx):  # ZeRO-3: the actor's parameters gathered once for the rollout
            s, _ = episodes.rollout_and_score(ctx.actor.module, ctx.tok, [ctx.train[i] for i in idx],
                                       [ctx.train_ids[i] for i in idx], ctx.reward, cfg, n=K,
                                       generator=episodes.rollout_generator(cfg.seed, step), first_prompt_index=first,
                                       sampler=ctx.sampler)  # rollout.engine=vllm: the engine's pushed weights
        rows = rollout_rows(s, None, limit=cfg.log.samples_per_step)  # samples.jsonl, marked chosen / rejected
        for g in range(len(idx)):
            scores = s.scores[g * K:(g + 1) * K]  # [K]
            if scores.max() == scores.min():
                continue  # a tie: no preference
            best, worst = g * K + int(scores.argmax()), g * K + int(scores.argmin())
            for i, role in ((best, "chosen"), (worst, "rejected")):
                if i < len(rows):
                    rows[i]["pair"] = role
            tokens = lambda i: s.response_ids[i, : int(s.lengths[i])].tolist()  # noqa: E731
            pairs.append(Encoded(s.prompt_ids[g * K], [tokens(best), tokens(worst)]))
            step_of.append(j)
        samples[j] = rows
        for k, v in episodes.reward_metrics(s, dist).items():
            sums[k] = sums.get(k, 0.0) + v / spr
    sums["round/pairs"] = lifecycle.global_count(float(len(pairs)), dist)
    sums["round/tied_frac"] = 1.0 - sums["round/pairs"] / (spr * t.prompts_per_step)
    t1 = time.time()
    if a.reference_free:
        ref = torch.zeros((len(pairs), 2))
    else:  # initial: the frozen starting policy; previous_iterate: the policy now, before the round trains
        model = ctx.ref if a.reference == "initial" else ctx.actor.module
        ref = batched_pair_logps(model, pairs, pad_id=ctx.pad, micro_batch_size=t.micro_batch_size)
    sums.update({"time/rollout": t1 - t0, "time/reference": time.time() - t1})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    torch.save({"pairs": [(p.prompt, p.responses) for p in pairs], "ref_logps": ref, "step_of": step_of,
                "metrics": sums}, tmp)
    tmp.rename(path)
    return Round(r, pairs, ref, step_of, sums, samples)


# --------------------------------------------------------------------------- the loop


def step_batch(ctx: setup.Context, cfg: RunConfig, dist: Dist, step: int, rnd: Round | None,
               ref_train: torch.Tensor | None):
    """This rank's pairs for ``step`` and their cached reference log-probs (or None)."""
    if rnd is not None:
        j = step % (cfg.train.steps // cfg.algo.rounds)
        rows = [i for i, s in enumerate(rnd.step_of) if s == j]
        return [rnd.pairs[i] for i in rows], rnd.ref_logps[rows]
    per_rank = cfg.train.prompts_per_step // dist.world_size
    idx = ctx.order.indices(step, cfg.train.prompts_per_step)[dist.rank * per_rank:(dist.rank + 1) * per_rank]
    return [ctx.train[i] for i in idx], (ref_train[idx] if ref_train is not None else None)


def evaluate(ctx: setup.Context, cfg: RunConfig, dist: Dist, ref_test: torch.Tensor | None) -> dict:
    """Greedy generation and preference accuracy on the held-out split (no backward: under ZeRO-3
    the actor's parameters are gathered once for both)."""
    out = {}
    with ctx.actor.gathered():
        if ctx.test:
            out.update(lifecycle.evaluate(ctx.actor.module, ctx.tok, ctx.test, ctx.test_ids, ctx.reward, cfg, dist,
                                          sampler=ctx.sampler))
        if ctx.test_pairs:
            out.update(preference_eval(ctx, cfg, dist, ref_test))
    return out


def train(cfg: RunConfig, dist: Dist) -> dict:
    torch.manual_seed(cfg.seed)
    a = cfg.algo
    ctx, cached = build_context(cfg, dist)
    evaluate_now = lambda: evaluate(ctx, cfg, dist, cached.test)  # noqa: E731
    ts, logger, before, clock = lifecycle.start(cfg, ctx, dist, "rltrain dpo" + (" (iterative)" if a.iterative else ""),
                                                evaluate=evaluate_now)
    rnd = None
    for step in clock.steps():
        t0 = time.time()
        metrics = {}
        # step 1 (iterative DPO): a new round's pairs from the policy's own samples at its first step
        if a.iterative:
            r, j = divmod(step, cfg.train.steps // a.rounds)
            if rnd is None or rnd.index != r:
                rnd = build_round(ctx, cfg, dist, r)
                if j == 0:
                    metrics.update(rnd.metrics)
            metrics["round"] = r
            if logger:  # the step's sampled rollouts (a round loaded back from disk has none)
                logger.samples(step + 1, "train", rnd.samples.get(j, []))
        # step 2: this step's pairs (and cached reference log-probs) and one optimizer step on them
        pairs, ref_logps = step_batch(ctx, cfg, dist, step, rnd, cached.train)
        t1 = time.time()
        metrics.update(dpo_step(ctx, cfg, dist, step, pairs, ref_logps))
        metrics["time/update"] = time.time() - t1
        setup.push_weights(ctx, metrics)  # rollout.engine=vllm: the next round and evaluation sample with them
        metrics["time/step"] = time.time() - t0
        # step 3: evaluation, logging, checkpoint
        if lifecycle.end_step(cfg, ctx, dist, clock, step + 1, metrics, logger=logger,
                      save=lambda: lifecycle.save(cfg, dist, ts, ctx.actor, ctx.tok), evaluate=evaluate_now):
            break
    after = evaluate_now()
    if logger:
        logger.event(clock.step, "eval", after)
        fmt = lambda d, k: f"{d[k]:.1%}" if d and k in d else "-"  # noqa: E731
        rows = lifecycle.eval_summary_rows(cfg.eval, before, after) if "accuracy" in after else []
        if "pref_accuracy" in after:
            rows.append(("held-out preference accuracy", fmt(before, "pref_accuracy"), fmt(after, "pref_accuracy")))
        logger.summary(rows)
        logger.close()
    setup.close(ctx)
    return {"eval_before": before, "eval_after": after, "run_dir": cfg.run_dir}
