"""SPO: Segment Policy Optimization (Guo et al. 2025, arXiv 2505.23564), chain and tree.

SPO-chain (``algo=spo_chain``), per step:
  sample ``samples_per_prompt`` responses per prompt → score → recompute token probabilities with
  the current actor at the sampling temperature → cut points at low-probability tokens (p < 0.9,
  every ``cut_interval``-th) or a fixed-count partition → ``mc_rollouts`` Monte-Carlo
  continuations from every distinct cut state (deduplicated across the batch) → V(cut) = mean
  continuation reward → segment advantages V(end) − V(start) → probability mask (advantage 0
  where p ≥ threshold) → whitening → the shared policy update.
SPO-tree (``algo=spo_tree``), per step:
  sample a tree per prompt (``branching`` children per node, segments of ``segment_len`` tokens;
  a node's prefix KV cache is shared by its children) → score the leaves → V(node) = mean of its
  children, bottom up → one training sample per edge with advantage V(child) − V(parent) →
  probability mask → edge replay (edges kept up to ``replay_max_age`` steps, at most
  ``replay_per_question`` drawn per question and step) → the shared policy update.

Deviations from the official code (decisions 2 and 3 in docs/algorithms.md), both configurable:
- ``first_segment_value=group_mean`` (default): V(prompt) is the mean reward of the prompt's own
  samples, so the first segment gets V(c₀) − V(prompt); ``zero`` reproduces the code (0).
- Whitening over the whole step's batch across ranks (``adv_whiten=batch``); ``per_minibatch``
  is not separately implemented: it falls back to the batch statistics.
- The KL term uses the configured aggregation (token-mean by default) instead of SPO's
  sum-over-tokens, mean-over-sequences; ``algo.loss_agg_mode=seq-mean-token-sum`` gives theirs
  for both terms.
- Replayed edges keep the old log-probs computed when they were added (as SPO does).

``rollout.engine=vllm`` (SPO-chain only, docs/vllm.md): the rollouts and the Monte-Carlo continuations are
sampled by the colocated vLLM engine (its prefix cache shares a row's cut states), the weights pushed after
each update; SPO-tree samples its trees with rltrain's engine (a node's KV cache shared by its children).

Distributed: each rank samples its slice of the step's prompts; every random stream (responses,
MC continuations, trees) is keyed by global positions (prompt, cut state), so a run's samples do
not depend on the number of ranks. The edge replay buffer is per rank.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rltrain.algos import core, select, spo
from rltrain.algos.grpo import group_means
from rltrain.config import RunConfig, SPOChainConfig, SPOTreeConfig
from rltrain.engine.dist import Dist
from rltrain.engine.model import eos_token_ids
from rltrain.loops import episodes, lifecycle, setup
from rltrain.rollout import forward
from rltrain.loops.pg import PGBatch, PolicyUpdate
from rltrain.report import progress
from rltrain.report.samples import completion_rows, rollout_rows
from rltrain.rewards.base import score_safely
from rltrain.rollout import SamplingParams, generate
from rltrain.rollout.tree import sample_tree


def _params(cfg: RunConfig, n: int, max_new: int) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(max_new_tokens=max_new, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, n=n,
                          stop_strings=tuple(r.stop_strings))


def _pad_rows(rows: list[list[int]], fill) -> torch.Tensor:
    T = max(1, max(len(r) for r in rows))
    return torch.tensor([list(r) + [fill] * (T - len(r)) for r in rows])


def global_offset(n: int, dist: Dist) -> int:
    """How many items the lower ranks hold (every rank calls this): the global position of this
    rank's first item when the ranks' lists are concatenated in rank order."""
    counts = dist.gather_cat(torch.tensor([n], dtype=torch.long))  # [world]
    return int(counts[:dist.rank].sum())


def whiten(adv: torch.Tensor, keep: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Whiten advantages over the kept tokens of the whole step (all ranks); 0 elsewhere."""
    # masked_whiten zeroes the positions outside ``keep``; fewer than two kept tokens have no
    # spread and give exactly 0, like any flat set (decision 11 in docs/algorithms.md).
    return core.masked_whiten(adv, keep, moments=dist.sum(core.masked_moments(adv, keep)))


# --------------------------------------------------------------------------- chain


def chain_batch(step: int, ctx, cfg: RunConfig, dist: Dist):
    """Rollouts, MC values at cut states and segment advantages for this rank's prompts (no
    backward: the loop calls it inside the actor's ``gathered()``)."""
    a, t = cfg.algo, cfg.train
    n = t.samples_per_prompt
    idx, first = episodes.rank_slice(ctx.order, step, t.prompts_per_step, dist)
    samples, prompt_ids = [ctx.train[i] for i in idx], [ctx.train_ids[i] for i in idx]
    s, times = episodes.rollout_and_score(ctx.actor.module, ctx.tok, samples, prompt_ids, ctx.reward, cfg, n=n,
                                   generator=episodes.rollout_generator(cfg.seed, step), first_prompt_index=first,
                                   sampler=ctx.sampler)  # rollout.engine=vllm: the engine's pushed weights
    temp = cfg.rollout.scoring_temperature
    pad = ctx.tok.pad_token_id
    t0 = time.time()
    old_logp, old_ent = forward.batched_logprobs(ctx.actor.module, s.prompt_ids, s.response_ids, pad_id=pad,
                                           temperature=temp, micro_batch_size=t.micro_batch_size, with_entropy=True)
    mask = s.mask.bool()
    if a.partition == "cutpoint":
        cuts = spo.cutpoint_partition(old_logp, mask, threshold=a.cut_threshold, interval=a.cut_interval)
    else:
        cuts = spo.fixed_count_partition(s.lengths, num_segments=a.num_segments)
    # Distinct cut states across the batch: prompt + response[: c + 1].
    states: dict[tuple[int, ...], int] = {}
    state_rows: list[tuple[int, int]] = []  # (row, c) of each distinct state
    for i, row_cuts in enumerate(cuts):
        for c in row_cuts:
            key = tuple(s.prompt_ids[i]) + tuple(s.response_ids[i, : c + 1].tolist())
            if key not in states:
                states[key] = len(state_rows)
                state_rows.append((i, c))
    values = torch.zeros(len(state_rows))
    mc_tokens = mc_used = prefill = prefill_unshared = 0
    first_state = global_offset(len(state_rows), dist)  # continuations keyed by the global state index
    if state_rows:
        prefixes = [list(k) for k in states]
        budget = cfg.rollout.max_new_tokens
        # Each cut state's continuations get only the budget left after it: nothing is generated past
        # the response cap (the tokens are the same as generating further and cutting, see generate()).
        caps = [max(budget - (c + 1), 1) for _, c in state_rows]
        # The cut states of a row are prefixes of one sequence: it is encoded once, up to its last
        # cut, and every state starts from its KV (the prefill was 43% of a chain step's MC time).
        last_cut: dict[int, int] = {}
        for i, c in state_rows:
            last_cut[i] = max(c, last_cut.get(i, -1))
        source_index = {i: k for k, i in enumerate(sorted(last_cut))}
        sources = [list(s.prompt_ids[i]) + s.response_ids[i, : last_cut[i] + 1].tolist() for i in source_index]
        source_of = [source_index[i] for i, _ in state_rows]
        prefill, prefill_unshared = sum(map(len, sources)), sum(map(len, prefixes))
        mc_generator = episodes.rollout_generator(cfg.seed, step, episodes.Stream.MC_VALUES)
        if ctx.sampler is not None:  # rollout.engine=vllm: its prefix cache shares the cut states' prefixes
            ro = ctx.sampler.generate(prefixes, _params(cfg, a.mc_rollouts, budget),
                                      eos_token_ids=eos_token_ids(ctx.actor.module, ctx.tok), pad_token_id=pad,
                                      generator=mc_generator, first_prompt_index=first_state, max_new_per_prompt=caps)
        else:  # one generate call for every cut state (shared batching); the bar counts decoded positions
            with progress.phase("mc_values", total=budget, unit="positions") as bar:
                ro = generate(ctx.actor.module, prefixes, _params(cfg, a.mc_rollouts, budget),
                              eos_token_ids=eos_token_ids(ctx.actor.module, ctx.tok), pad_token_id=pad,
                              tokenizer=ctx.tok, generator=mc_generator, first_prompt_index=first_state,
                              max_new_per_prompt=caps, on_position=bar.update, shared_prefixes=(sources, source_of))
                bar.update(budget)  # an early stop ends the phase
        texts, seq_samples = [], []
        for j in range(len(ro.lengths)):
            row, c = state_rows[int(ro.prompt_index[j])]
            left = budget - (c + 1)  # the continuation may not run past the original response cap
            cont = ro.response_ids[j, : min(int(ro.lengths[j]), max(left, 0))].tolist()
            mc_tokens += int(ro.lengths[j])
            mc_used += len(cont)
            full = s.response_ids[row, : c + 1].tolist() + cont
            texts.append(ctx.tok.decode(full, skip_special_tokens=True))
            seq_samples.append(s.samples[row])
        out = score_safely(ctx.reward, seq_samples, texts, max_fail_fraction=cfg.reward.max_fail_fraction)
        values = torch.tensor(out.scores, dtype=torch.float32).view(len(state_rows), a.mc_rollouts).mean(-1)
    cut_values = [[float(values[states[tuple(s.prompt_ids[i]) + tuple(s.response_ids[i, : c + 1].tolist())]])
                   for c in row_cuts] for i, row_cuts in enumerate(cuts)]
    # V(prompt) for the first segment: the mean reward of the prompt's own samples (decision 2 in docs/algorithms.md)
    prompt_values = group_means(s.scores, n) if a.first_segment_value == "group_mean" else None
    adv = spo.chain_advantages(cuts, cut_values, s.scores, mask, first_segment_value=a.first_segment_value,
                               prompt_values=prompt_values)
    times["time/mc_values"] = time.time() - t0
    stats = {"spo/segments_mean": sum(len(c) + 1 for c in cuts) / max(len(cuts), 1),
             "spo/cut_states": len(state_rows), "spo/value_mean": float(values.mean()) if len(values) else 0.0,
             "spo/mc_tokens": mc_tokens, "spo/mc_tokens_used": mc_used,
             "spo/mc_prefill_tokens": prefill, "spo/mc_prefill_tokens_unshared": prefill_unshared}
    return s, adv, old_logp, old_ent, times, stats


# --------------------------------------------------------------------------- tree


@dataclass
class Edge:
    """One training sample of SPO-tree: the parent's full text → the child's segment."""

    question: str
    step: int
    prompt_ids: list[int]
    response_ids: list[int]
    advantage: float
    old_logp: torch.Tensor | None = None  # [len(response)], filled when the edge is added
    branch: int = -1  # the depth-1 node this edge lies under (its own child for a depth-1 edge)
    parent_len: int = -1  # where the parent edge's segment starts in prompt_ids (-1: the parent is the root)
    carrier: bool = False  # only carries its segment's KV for the edges below it (no loss)


class EdgeReplay:
    """SPO's "on-policy" edge buffer: edges live ``max_age`` steps; each step draws at most
    ``per_question`` edges per question (drawn edges leave the buffer). max_age = 0: no replay,
    every new edge is used once."""

    def __init__(self, max_age: int, per_question: int, edges: list[Edge] | None = None):
        self.max_age, self.per_question = max_age, per_question
        self.edges: list[Edge] = list(edges or [])

    def draw(self, new: list[Edge], step: int, generator: torch.Generator) -> list[Edge]:
        if self.max_age <= 0:
            return new
        self.edges = [e for e in self.edges if step - e.step < self.max_age] + new
        by_q: dict[str, list[int]] = {}
        for i, e in enumerate(self.edges):
            by_q.setdefault(e.question, []).append(i)
        take: list[int] = []
        for q in sorted(by_q):
            ids = by_q[q]
            perm = torch.randperm(len(ids), generator=generator)[: self.per_question].tolist()
            take.extend(ids[p] for p in perm)
        chosen = set(take)
        drawn = [self.edges[i] for i in sorted(take)]
        self.edges = [e for i, e in enumerate(self.edges) if i not in chosen]
        return drawn


def tree_batch(step: int, ctx, cfg: RunConfig, dist: Dist):
    """Trees for this rank's prompts, leaf rewards, node values and the kept edges; and the first
    leaves (whole responses) as samples.jsonl rows."""
    a, t = cfg.algo, cfg.train
    idx, first = episodes.rank_slice(ctx.order, step, t.prompts_per_step, dist)
    samples, prompt_ids = [ctx.train[i] for i in idx], [ctx.train_ids[i] for i in idx]
    t0 = time.time()
    ctx.actor.module.eval()
    with progress.phase("rollout", unit="positions") as bar:  # the bar counts decoded positions
        trees = sample_tree(ctx.actor.module, prompt_ids, list(a.branching), a.segment_len, cfg.rollout.max_new_tokens,
                            _params(cfg, 1, cfg.rollout.max_new_tokens),
                            eos_token_ids=eos_token_ids(ctx.actor.module, ctx.tok), pad_token_id=ctx.tok.pad_token_id,
                            tokenizer=ctx.tok, generator=episodes.rollout_generator(cfg.seed, step),
                            first_prompt_index=first, on_position=bar.update)
        bar.update(bar.total or bar.done)
    ctx.actor.module.train()
    t1 = time.time()
    leaf_refs, texts, leaf_samples = [], [], []
    for ti, tree in enumerate(trees):
        for leaf in tree.leaves():
            leaf_refs.append((ti, leaf))
            texts.append(ctx.tok.decode(tree.response_ids(leaf), skip_special_tokens=True))
            leaf_samples.append(samples[ti])
    out = score_safely(ctx.reward, leaf_samples, texts, max_fail_fraction=cfg.reward.max_fail_fraction)
    t2 = time.time()
    leaf_reward = [torch.full((len(tr),), float("nan")) for tr in trees]
    for (ti, leaf), r in zip(leaf_refs, out.scores):
        leaf_reward[ti][leaf] = r
    new_edges, root_values, n_nodes = [], [], 0
    for ti, tree in enumerate(trees):
        children, adv = spo.tree_training_edges(tree.parent, leaf_reward[ti], variant=a.tree_adv)
        values, _ = spo.tree_values(tree.parent, leaf_reward[ti])
        root_values.append(float(values[0]))
        n_nodes += len(tree)
        for c, v in zip(children.tolist(), adv.tolist()):
            parent_resp = tree.response_ids(tree.parent[c])
            top = c
            while tree.parent[top] > 0:  # up to the root's child
                top = tree.parent[top]
            p = tree.parent[c]
            parent_len = len(tree.prompt_ids) + len(tree.response_ids(tree.parent[p])) if p > 0 else -1
            new_edges.append(Edge(question=samples[ti].id, step=step, prompt_ids=tree.prompt_ids + parent_resp,
                                  response_ids=list(tree.token_ids[c]), advantage=v, branch=top,
                                  parent_len=parent_len))
    gen_tokens = sum(len(tok) for tr in trees for tok in tr.token_ids)
    correct = out.info.get("correct")
    stats = {"reward/mean": sum(out.scores) / max(len(out.scores), 1),
             "tree/nodes": n_nodes / max(len(trees), 1), "tree/leaves": len(leaf_refs) / max(len(trees), 1),
             "tree/edges_new": len(new_edges), "spo/value_mean": sum(root_values) / max(len(root_values), 1),
             "perf/generated_tokens": gen_tokens, "perf/tokens_per_s": gen_tokens / max(t1 - t0, 1e-9),
             "reward/failed": sum(bool(f) for f in out.info.get("failed", []))}
    if correct is not None:
        stats["reward/accuracy"] = sum(bool(c) for c in correct) / max(len(correct), 1)
    rows = completion_rows(leaf_samples, texts, out.scores, out.info,
                           [len(trees[ti].response_ids(leaf)) for ti, leaf in leaf_refs[:cfg.log.samples_per_step]],
                           limit=cfg.log.samples_per_step)
    return new_edges, {"time/rollout": t1 - t0, "time/reward": t2 - t1}, stats, rows


def with_carriers(edges: list[Edge]) -> list[Edge]:
    """``edges`` (grouped by (question, step, branch)) with a carrier in front of each group whose
    depth-1 edge is absent (its advantage was 0, or replay drew it another step) while edges below
    it are present: the carrier's segment is encoded once for them (no loss, no gradient of its
    own beyond what flows through the shared KV), instead of once per edge inside its context."""
    out: list[Edge] = []
    i = 0
    while i < len(edges):
        j = i
        key = (edges[i].question, edges[i].step, edges[i].branch)
        while j < len(edges) and (edges[j].question, edges[j].step, edges[j].branch) == key:
            j += 1
        group = edges[i:j]
        child = next((e for e in group if e.parent_len >= 0), None)
        if child is not None and all(e.parent_len >= 0 for e in group):
            ctx, seg = child.prompt_ids[: child.parent_len], child.prompt_ids[child.parent_len:]
            out.append(Edge(child.question, child.step, list(ctx), list(seg), 0.0, torch.zeros(len(seg)),
                            branch=child.branch, carrier=True))
        out.extend(group)
        i = j
    return out


def unique_tokens(prompt_ids: list[list[int]], resp: torch.Tensor, lengths: torch.Tensor) -> int:
    """Distinct token positions of the sequences ``context + response`` (the size of their prefix
    trie): for a tree's edges, the prompt plus every segment, each once."""
    root: dict = {}
    n = 0
    for p, r, m in zip(prompt_ids, resp.tolist(), lengths.long().tolist()):
        node = root
        for tok in list(p) + r[:m]:
            if tok not in node:
                node[tok] = {}
                n += 1
            node = node[tok]
    return n


def edges_to_batch(edges: list[Edge], pad: int):
    resp = _pad_rows([e.response_ids for e in edges], pad)  # [E, T]
    mask = _pad_rows([[1] * len(e.response_ids) for e in edges], 0).float()
    adv = torch.tensor([e.advantage for e in edges], dtype=torch.float32)[:, None] * mask
    return [e.prompt_ids for e in edges], resp, mask, adv


# --------------------------------------------------------------------------- loop


@dataclass
class StepBatch:
    """One rank's training rows of a step, as a variant collected them (before the probability mask)."""

    prompt_ids: list[list[int]]
    response_ids: torch.Tensor  # [N, T]
    mask: torch.Tensor  # [N, T] float, tokens with a loss
    advantages: torch.Tensor  # [N, T]
    old_logp: torch.Tensor  # [N, T] π_old of the response tokens (the probability mask reads it)
    old_entropy: torch.Tensor | None  # [N, T] when the token selection reads π_old's entropy
    times: dict
    stats: dict
    layout: dict  # the variant's own PGBatch fields (rollout log-probs; the tree forward's layout)
    rollout: episodes.Scored | None = None  # chain: the step's rollouts (row i ↔ training row i), for samples.jsonl
    samples: list | None = None  # tree: samples.jsonl rows of the first leaves (whole responses; edges hold the advantages)


def chain_step(step: int, ctx, cfg: RunConfig, dist: Dist, update: PolicyUpdate, ts) -> StepBatch:
    """SPO-chain's half of a step: this step's rollouts with their segment advantages."""
    with ctx.actor.gathered():  # ZeRO-3: one gather for rollout, old log-probs and MC continuations
        s, adv, old_logp, old_ent, times, stats = chain_batch(step, ctx, cfg, dist)
    stats.update(episodes.rollout_metrics(s, times, dist))
    return StepBatch(s.prompt_ids, s.response_ids, s.mask, adv, old_logp, old_ent, times, stats,
                     layout=dict(rollout_logp=s.logprobs), rollout=s)


def tree_step(step: int, ctx, cfg: RunConfig, dist: Dist, update: PolicyUpdate, ts) -> StepBatch:
    """SPO-tree's half of a step: new edges into the replay buffer (``ts.loop["replay"]``, kept in
    checkpoints), the drawn edges laid out for the tree forward."""
    a, t = cfg.algo, cfg.train
    pad, temp = ctx.tok.pad_token_id, cfg.rollout.scoring_temperature
    # ZeRO-3: one gather for the trees and the new edges' old log-probs (their count, and so the
    # number of forwards, differs between ranks: per-layer gathers would not pair up)
    with ctx.actor.gathered():
        new, times, stats, rows = tree_batch(step, ctx, cfg, dist)
        edges = [e for e in new if e.old_logp is None]
        if edges:  # old log-probs of new edges, from the trainer's own forward
            lp, _ = forward.batched_logprobs(ctx.actor.module, [e.prompt_ids for e in edges],
                                             edges_to_batch(edges, pad)[1], pad_id=pad, temperature=temp,
                                             micro_batch_size=t.micro_batch_size)
            for e, row in zip(edges, lp):
                e.old_logp = row[: len(e.response_ids)].clone()
    replay = EdgeReplay(a.replay_max_age, a.replay_per_question, edges=ts.loop.get("replay", []))
    drawn = replay.draw(new, step, episodes.step_generator(cfg.seed, step, dist.rank, episodes.Stream.EDGE_REPLAY))
    ts.loop["replay"] = replay.edges  # the buffer after this step, for a checkpoint
    # A depth-1 edge and the edges below it run on one KV cache: keep them together (stable order).
    drawn = sorted(drawn, key=lambda e: (e.question, e.step, e.branch))
    stats["tree/edges_trained"] = lifecycle.global_count(len(drawn), dist)
    drawn = with_carriers(drawn)
    stand_in = not drawn  # this rank has nothing to learn (its leaves all scored alike)
    if stand_in:  # one fully masked edge keeps its passes in step with the other ranks
        drawn = [Edge("", step, [pad], [pad], 0.0, torch.zeros(1))]
    prompt_ids, resp, mask, adv = edges_to_batch(drawn, pad)
    tree_lengths = mask.sum(1).long()  # [E] real segment lengths, carriers included
    mask[torch.tensor([e.carrier for e in drawn], dtype=torch.bool)] = 0.0
    if stand_in:
        mask = torch.zeros_like(mask)
    old_logp = _pad_rows([e.old_logp.tolist() for e in drawn], 0.0).float()
    old_ent = None
    if "entropy" in update.selector.requires:  # the selector reads π_old's entropy
        old_logp, old_ent = forward.batched_logprobs(ctx.actor.module, prompt_ids, resp, pad_id=pad,
                                                     temperature=temp, micro_batch_size=t.micro_batch_size,
                                                     with_entropy=True)
    # Edges run on their parents' KV cache: a whole tree in one micro-batch where it fits (its prompt
    # encoded once), else its branches.
    per_tree: dict[tuple[str, int], int] = {}
    for e in drawn:
        per_tree[(e.question, e.step)] = per_tree.get((e.question, e.step), 0) + 1
    family: dict[tuple, int] = {}
    fam = torch.tensor([family.setdefault((e.question, e.step) if per_tree[(e.question, e.step)] <= t.micro_batch_size
                                          else (e.question, e.step, e.branch), len(family)) for e in drawn])
    stats["perf/tree_unique_tokens"] = lifecycle.global_count(float(unique_tokens(prompt_ids, resp, tree_lengths)), dist)
    return StepBatch(prompt_ids, resp, mask, adv, old_logp, old_ent, times, stats,
                     layout=dict(tree_levels=len(a.branching), families=fam, tree_lengths=tree_lengths), samples=rows)


# Each variant's half of a step, by its schema (chosen once, in ``train``).
STEPS = {SPOChainConfig: chain_step, SPOTreeConfig: tree_step}


def train(cfg: RunConfig, dist: Dist) -> dict:
    torch.manual_seed(cfg.seed)
    t, a = cfg.train, cfg.algo
    ctx = setup.Context(cfg, dist, total_optimizer_steps=t.total_optimizer_steps, with_reference=a.kl_coef > 0)
    update = PolicyUpdate(cfg)
    collect = STEPS[type(a)]
    ts, logger, before, clock = lifecycle.start(cfg, ctx, dist, f"rltrain {a.name}")
    pad, temp = ctx.tok.pad_token_id, cfg.rollout.scoring_temperature
    for step in clock.steps():
        t0 = time.time()
        # step 1: the variant's rows: chain rollouts + MC values, or tree edges
        b = collect(step, ctx, cfg, dist, update, ts)
        stats, times, mask, adv = b.stats, b.times, b.mask, b.advantages
        # step 2: the probability mask (docs/algorithms.md §4.4): zero the advantage of confident tokens, then whiten
        valid = mask.bool()
        keep = select.prob_mask(b.old_logp, valid, threshold=a.cut_threshold) if a.prob_mask else valid
        stats["spo/prob_mask_frac"] = float(keep.sum()) / max(float(valid.sum()), 1.0)
        adv = torch.where(keep, adv, torch.zeros_like(adv))
        stats["spo/adv_abs_mean"] = float(core.masked_mean(adv.abs(), keep))
        if a.adv_whiten != "none":
            adv = whiten(adv, keep, dist)
        if a.prob_mask and a.mask_denominator == "kept":  # the official denominator: kept tokens only
            mask = keep.float()
        # step 3: reference log-probs for the KL term
        ref_logp = None
        if ctx.ref is not None:
            t1 = time.time()
            ref_logp, _ = forward.batched_logprobs(ctx.ref, b.prompt_ids, b.response_ids, pad_id=pad, temperature=temp,
                                                   micro_batch_size=t.micro_batch_size)
            times["time/reference"] = time.time() - t1
        stats["spo/zero_adv_token_frac"] = float(((adv == 0) & keep).sum()) / max(float(keep.sum()), 1.0)
        # step 4: the shared policy update
        batch = PGBatch(b.prompt_ids, b.response_ids, mask, adv, ref_logp, old_logp=b.old_logp,
                        old_entropy=b.old_entropy, log_mask=valid, **b.layout)
        metrics = update.run(ctx.actor, batch, dist, pad_id=pad, step=step,
                             generator=episodes.update_generator(cfg.seed, step))
        setup.push_weights(ctx, metrics)  # rollout.engine=vllm (spo_chain): the next rollout samples with them
        metrics.update(stats)
        metrics.update(times)
        metrics["time/step"] = time.time() - t0
        # step 5: samples, evaluation, logging, checkpoint
        if logger:  # chain: the first rollouts with the advantages trained on; tree: the first leaves
            logger.samples(step + 1, "train", b.samples if b.rollout is None else
                           rollout_rows(b.rollout, adv, limit=cfg.log.samples_per_step))
        if lifecycle.end_step(cfg, ctx, dist, clock, step + 1, metrics, logger=logger,
                              save=lambda: lifecycle.save(cfg, dist, ts, ctx.actor, ctx.tok)):
            break
    return lifecycle.final_eval(cfg, ctx, dist, logger, before, step=clock.step)
