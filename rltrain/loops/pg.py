"""The policy-gradient update shared by GRPO, SPO and PPO's actor: given sequences, per-token
advantages and (optionally) reference log-probs, run ``epochs`` × ``minibatches_per_step``
optimizer steps with micro-batching. The objective of one micro-batch (policy loss, token
selection, aggregation, KL, entropy bonus, early stop) is ``rltrain.algos.objective.PGObjective``,
built once from the config; this module only feeds it: batch-wide selections and global
denominators, micro-batches (``micro_batches``), the forward (``BatchForward``: plain or SPO-tree,
chosen once per batch) and what is logged besides the loss (``UpdateDiagnostics``).

Batch-wide quantities (the high-entropy threshold, the covariance pools of Clip-Cov/KL-Cov, the
aggregation denominators) are reduced across ranks before any gradient is taken. When the update
is a single on-policy pass (one minibatch, one epoch) and nothing batch-wide needs the current
policy's statistics up front, no separate "old log-prob" forward is run: π_old = π_θ detached.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from rltrain.algos import core, registry
from rltrain.algos.correction import correction_weights, mismatch_metrics
from rltrain.algos.objective import PGObjective
from rltrain.algos.select import TokenSelection
from rltrain.config import RunConfig, option_kwargs
from rltrain.engine.dist import Dist
from rltrain.loops.lifecycle import Metrics, chunks, entropy_stats, finite_or_raise
from rltrain.rollout.forward import unique_prompts, batched_logprobs, response_logprobs
from rltrain.rollout.tree_forward import tree_response_logprobs

log = logging.getLogger(__name__)


@dataclass
class PGBatch:
    """One rank's training sequences for a step."""

    prompt_ids: list[list[int]]
    response_ids: torch.Tensor  # [N, T]
    mask: torch.Tensor  # [N, T] float, the tokens the loss is taken over (valid response tokens unless masked)
    advantages: torch.Tensor  # [N, T]
    ref_logp: torch.Tensor | None = None  # [N, T], only when algo.kl_coef > 0 (KL loss)
    old_logp: torch.Tensor | None = None  # [N, T] π_old, when the caller already computed it (PPO)
    old_entropy: torch.Tensor | None = None  # [N, T], with old_logp
    rollout_entropy: torch.Tensor | None = None  # [N, T] entropy at sampling time (for logging)
    rollout_logp: torch.Tensor | None = None  # [N, T] the sampler's log-probs (rollout/trainer mismatch metrics)
    tree_levels: int = 0  # > 1: rows are SPO-tree edges; run each on its parent edge's KV (rollout.tree_forward)
    families: torch.Tensor | None = None  # [N] long: rows to keep in one micro-batch where they fit (a tree's edges)
    tree_lengths: torch.Tensor | None = None  # [N] segment lengths for the tree forward; a row with length > 0 and
    # no valid token is a carrier: it runs (its KV serves the rows below it) but has no loss
    log_mask: torch.Tensor | None = None  # [N, T] the valid response tokens the logged entropy is taken over,
    # where ``mask`` is a subset of them (SPO's probability mask with the kept-token denominator); None: ``mask``


def response_spans(mask: torch.Tensor) -> torch.Tensor:
    """``[N]`` the position after each row's last true token (0 for none): the width a row's forward
    needs. Equal to ``mask.sum(1)`` for a single-turn mask (a prefix of ones); a multi-turn episode's mask
    is 0 on the environment's tokens between the model's turns, and its forward must still reach the
    last turn."""
    pos = torch.arange(1, mask.shape[1] + 1)  # [T]
    return (mask.bool() * pos).amax(1) if mask.shape[1] else torch.zeros(mask.shape[0], dtype=torch.long)


def _packed(keep: torch.Tensor, families: torch.Tensor | None, size: int) -> list[torch.Tensor]:
    """Chunks of ``keep`` of at most ``size`` rows; with ``families``, consecutive rows of one family
    stay together while they fit (a family larger than ``size`` is split)."""
    if families is None:
        return [keep[list(mb)] for mb in chunks(len(keep), size)]
    out, cur = [], []
    for fam in torch.unique_consecutive(families[keep], return_counts=True)[1].tolist():
        rows, keep = keep[:fam].tolist(), keep[fam:]
        while rows:
            if cur and len(cur) + min(len(rows), size) > size:
                out.append(torch.tensor(cur, dtype=torch.long))
                cur = []
            take = size - len(cur)
            cur, rows = cur + rows[:take], rows[take:]
    if cur:
        out.append(torch.tensor(cur, dtype=torch.long))
    return out


def _forward_tokens(prompts: list[list[int]], width: int) -> int:
    """Tokens one micro-batch of these rows' prompts puts through the model (``response_logits``):
    its distinct prompts left-padded to the longest, plus every row padded to ``width``."""
    unique = {tuple(p) for p in prompts}
    return len(unique) * max(map(len, unique)) + len(prompts) * width


def _by_length(keep: torch.Tensor, lens: torch.Tensor, prompt_ids: list[list[int]], size: int) -> list[torch.Tensor]:
    """Chunks of ``keep`` of at most ``size`` rows, in the order of three candidates that puts the
    fewest tokens through the model: rows as given (a group's rows share one prompt encoding),
    groups by their longest response with rows by length inside, or all rows by length (least
    padding, more prompts per chunk). A micro-batch runs to its longest row, so one rambling sample
    among short ones pads them all; which rows share a micro-batch changes no gradient, only the
    order in which float sums are taken."""
    ln = lens.tolist()
    rows = keep.tolist()
    longest: dict[tuple[int, ...], int] = {}
    for i in rows:
        key = tuple(prompt_ids[i])
        longest[key] = max(longest.get(key, 0), ln[i])
    orders = [rows,
              sorted(rows, key=lambda i: (-longest[tuple(prompt_ids[i])], tuple(prompt_ids[i]), -ln[i])),
              sorted(rows, key=lambda i: -ln[i])]

    def split(order):
        return [order[s:s + size] for s in range(0, len(order), size)]

    def cost(chunks):
        return sum(_forward_tokens([prompt_ids[i] for i in c], max(1, max(ln[i] for i in c))) for c in chunks)

    best = min((split(o) for o in orders), key=cost)
    return [torch.tensor(c, dtype=torch.long) for c in best]


def micro_batches(rows: torch.Tensor, skip: torch.Tensor, size: int, dist, families=None, lens=None,
                  prompt_ids=None) -> list:
    """This rank's micro-batches of minibatch ``rows``: ``(row indices, real)``; ``real`` False
    for a stand-in (its loss is multiplied by 0).

    With ``lens`` (response lengths) and ``prompt_ids`` and no ``families``, rows are grouped to
    put the fewest tokens through the model (``_by_length``). Skipped rows are left out. At least
    one micro-batch always runs (a stand-in when nothing is left) so that every parameter gets a
    gradient, zero or not, and the optimizer step is the same as without skipping. ``dist`` (the actor's ``collective``: DeepSpeed on several ranks, whose
    forward and backward are collectives): every rank runs as many micro-batches as the busiest one.
    """
    keep = rows[~skip[rows]]
    if families is None and lens is not None and len(keep):
        out = [(mb, True) for mb in _by_length(keep, lens, prompt_ids, size)]
    else:
        out = [(mb, True) for mb in _packed(keep, families, size)]
    want = max(1, len(out))
    if dist is not None:
        want = int(dist.max(torch.tensor([float(want)])).item())
    stand_in = rows[:1] if len(rows) else torch.zeros(1, dtype=torch.long)  # row 0: a minibatch this rank has no row of
    return out + [(stand_in, False)] * (want - len(out))


def _my_slice(row: torch.Tensor, mask: torch.Tensor, dist: Dist) -> torch.Tensor:
    """This rank's part of a pooled selection row [1, N_global] as [B, T] (rank order pools)."""
    n_local = int(mask.sum())
    counts = dist.gather_cat(torch.tensor([n_local], dtype=torch.long))
    offset = int(counts[: dist.rank].sum())
    return core.unflatten_valid(row[0, offset:offset + n_local], mask, fill=False)


class BatchForward:
    """The training forward of a step's micro-batches, chosen once per batch: the plain forward
    (``response_logprobs``) or, for SPO-tree edges (``tree_levels`` > 1), each edge on its parent
    edge's KV cache (``tree_response_logprobs``). Counts the tokens it puts through the model
    (``tokens``) and, for the tree, what the plain forward of the same rows would take (``plain``)."""

    def __init__(self, module, batch: PGBatch, mask: torch.Tensor, *, pad_id: int, temperature: float):
        self.module, self.batch, self.pad_id, self.temp = module, batch, pad_id, temperature
        self.tree = batch.tree_levels > 1
        # [N] segment lengths; a response's span reaches its last loss token (multi-turn masks have holes)
        self.lens = batch.tree_lengths if batch.tree_lengths is not None else response_spans(mask)
        self.tokens: dict = {}  # "tokens" through the model in the update, "plain" (tree only)

    def width(self, idx: torch.Tensor) -> int:
        """The longest response (segment) among rows ``idx``: the micro-batch's width."""
        return max(1, int(self.lens[idx].max()))

    def __call__(self, idx: torch.Tensor, width: int, *, with_entropy: bool, real: bool):
        """Log-probs and (``with_entropy``) entropies ``[b, width]`` of rows ``idx``."""
        b, p_ids = self.batch, [self.batch.prompt_ids[i] for i in idx.tolist()]
        if not self.tree:
            out = response_logprobs(self.module, p_ids, b.response_ids[idx, :width], pad_id=self.pad_id,
                                    temperature=self.temp, with_entropy=with_entropy)
            if real:
                self._count("tokens", _forward_tokens(p_ids, width))
            return out
        out = tree_response_logprobs(self.module, p_ids, b.response_ids[idx, :width], self.lens[idx].clamp(min=1),
                                     pad_id=self.pad_id, temperature=self.temp, levels=b.tree_levels,
                                     with_entropy=with_entropy, stats=self.tokens)
        if real:  # what the plain forward of these edges would take
            self._count("plain", sum(map(len, unique_prompts(p_ids)[0])) + int(self.lens[idx].sum()))
        return out

    def _count(self, key: str, n: int) -> None:
        self.tokens[key] = self.tokens.get(key, 0) + n


class UpdateDiagnostics:
    """What the update logs besides the objective's own metrics: the selected and skipped fractions,
    the policy entropy (the rollout's or π_old's when known, else the first epoch's forwards), the
    rollout↔trainer mismatch (the trainer's log-probs of the sampled tokens under the sampling policy:
    π_old when computed, else the first minibatch's forwards, before any optimizer step) and the
    tokens put through the model. ``m`` collects token-weighted metrics, reduced across ranks."""

    def __init__(self, batch: PGBatch, sel: TokenSelection, skip: torch.Tensor, old_logp, old_ent):
        self.batch, self.m = batch, Metrics()
        mask, N = sel.mask, len(skip)
        self.m.add("actor/token_select_frac", (sel.loss_mask.sum() / mask.sum().clamp(min=1)).item(), mask.sum().item())
        self.m.add("actor/skipped_rows_frac", float(skip.float().mean()) if N else 0.0, float(N))
        self.log_ent = old_ent if old_ent is not None else batch.rollout_entropy  # [N, T] or None
        self.need_pairs = batch.rollout_logp is not None and old_logp is None  # from the update's forwards
        self.pairs = [(batch.rollout_logp, old_logp, mask)] if batch.rollout_logp is not None and not self.need_pairs \
            else []
        self.entropies: list = []  # (entropy, mask) of the first epoch's micro-batches, when log_ent is None

    def wants_entropy(self, epoch: int) -> bool:
        return self.log_ent is None and epoch == 0

    def forward(self, idx, width: int, tokens: TokenSelection, logp, ent, *, real: bool, first_pass: bool,
                epoch: int) -> None:
        """Record a micro-batch's forward: its mismatch pair and entropies (stand-ins join masked:
        the statistics are collective)."""
        mk = tokens.mask if real else torch.zeros_like(tokens.mask)
        if self.need_pairs and first_pass:
            self.pairs.append((self.batch.rollout_logp[idx, :width], logp.detach(), mk))
        if ent is not None and epoch == 0:
            self.entropies.append((ent.detach(), mk))

    def loss(self, loss: torch.Tensor, metrics: dict, counts: torch.Tensor, mask: torch.Tensor) -> None:
        """A real micro-batch's loss (rescaled to its token mean) and the objective's metrics, token-weighted."""
        ntok = mask.sum().item()
        self.m.add("actor/pg_loss", loss.item() * counts[0].item() / max(ntok, 1), ntok)
        if "early_stopped" in metrics:
            self.m.add("actor/early_stopped", float(metrics.pop("early_stopped")), 1.0)
        for name, v in metrics.items():
            self.m.add(f"actor/{name}", float(v), ntok)

    def reduce(self, dist: Dist, mask: torch.Tensor, tokens: dict) -> dict:
        """Every metric, reduced across ranks."""
        b = self.batch
        out = self.m.reduce(dist)
        out["actor/pg_loss"] = out.get("actor/pg_loss", 0.0)
        if b.rollout_logp is not None:
            out.update(mismatch(self.pairs, dist))
        n = dist.sum(torch.tensor([float(tokens.get("tokens", 0)), float(tokens.get("plain", 0))]))
        out["perf/update_tokens"] = n[0].item()  # through the model, padding included, all epochs
        if b.tree_levels > 1:
            out["perf/update_tokens_plain"] = n[1].item()
        if self.log_ent is not None:  # over every response token, whichever of them the loss is taken over
            out.update(entropy_stats(self.log_ent, mask if b.log_mask is None else b.log_mask.bool(), dist))
        elif self.entropies:
            T = b.response_ids.shape[1]
            e = torch.cat([torch.nn.functional.pad(x, (0, T - x.shape[1])) for x, _ in self.entropies])
            mm = torch.cat([torch.nn.functional.pad(y, (0, T - y.shape[1])) for _, y in self.entropies])
            out.update(entropy_stats(e, mm, dist))
        return out


def mismatch(pairs: list, dist: Dist) -> dict:
    """``mismatch/*`` metrics over every rank's (sampler, trainer) log-prob pairs of valid tokens."""
    roll = torch.cat([core.flatten_valid(r.float(), mk) for r, _, mk in pairs]) if pairs else torch.zeros(0)
    train = torch.cat([core.flatten_valid(t.float(), mk) for _, t, mk in pairs]) if pairs else torch.zeros(0)
    roll, train = dist.gather_cat(roll), dist.gather_cat(train)  # [N_global]
    ones = torch.ones(1, roll.numel(), dtype=torch.bool)
    return {f"mismatch/{k}": float(v) for k, v in mismatch_metrics(roll[None], train[None], ones).items()}


class PolicyUpdate:
    """The configured update, read from the config once (at setup); ``run`` trains one step.

    ``early_stop_ratio`` > 0: a micro-batch whose mean importance ratio exceeds it contributes no
    gradient (its loss × 0; ReaLHF's ``early_stop_imp_ratio``, PPO's ``algo.early_stop_ratio``)."""

    def __init__(self, cfg: RunConfig, early_stop_ratio: float = 0.0):
        t, a, r = cfg.train, cfg.algo, cfg.rollout
        self.selector = registry.get("token_selection", cfg.token_selection.name)
        self.sel_opts = option_kwargs(cfg.token_selection)
        self.loss_name = cfg.policy_loss.name
        self.objective = PGObjective(
            registry.get("policy_loss", cfg.policy_loss.name), option_kwargs(cfg.policy_loss), a.loss_agg_mode,
            a.loss_agg_constant or float(r.max_new_tokens), kl_coef=a.kl_coef, kl_estimator=a.kl_estimator,
            entropy_coef=a.entropy_coef, early_stop_ratio=early_stop_ratio)
        self.temp = r.scoring_temperature
        self.minibatches, self.epochs, self.micro = t.minibatches_per_step, t.epochs, t.micro_batch_size
        self.warned = False
        self.correction = dict(mode=r.correction, c=r.correction_c, icepop_low=r.correction_icepop_low,
                               icepop_high=r.correction_icepop_high, seq_low=r.correction_seq_low,
                               seq_high=r.correction_seq_high)

    def needs_old_pass(self) -> bool:
        """Whether the update needs log-probs (and entropies) of the whole batch before training."""
        off_policy = self.minibatches > 1 or self.epochs > 1
        loss = self.objective.policy_loss
        return (off_policy or bool(self.selector.requires) or self.selector.needs_pool(self.sel_opts)
                or loss.needs_pool(self.objective.loss_options))

    def skippable_rows(self, batch: PGBatch, mask: torch.Tensor) -> torch.Tensor:
        """bool ``[N]``: rows whose loss and gradient are exactly zero, so the update need not run them.

        A row qualifies when all its advantages are 0 (a GRPO group with equal rewards: on a hard
        task most groups at the start) and nothing else in the loss depends on it: the policy loss
        vanishes with A = 0 and selects nothing per micro-batch, there is no KL loss, no entropy
        bonus, and no micro-batch-level early stop. Skipping then changes no gradient, only which
        rows share a micro-batch. SPO-tree's carriers (rows with a segment but no loss token: their
        KV serves the rows below them) are never skipped.
        """
        o, spec = self.objective, self.objective.policy_loss
        exact = (spec.zero_without_advantage and (spec.select is None or spec.needs_pool(o.loss_options))
                 and batch.ref_logp is None and o.entropy_coef == 0 and o.early_stop_ratio <= 0)
        if not exact:
            return torch.zeros(mask.shape[0], dtype=torch.bool)
        skip = ~((batch.advantages != 0) & mask).any(dim=1)
        if batch.tree_lengths is not None:
            skip &= ~((batch.tree_lengths > 0) & ~mask.any(1))
        return skip

    def select_tokens(self, mask, old_logp, old_ent, dist: Dist) -> TokenSelection:
        """The step's TokenSelection (batch-wide threshold pooled across ranks when configured)."""
        spec, opts = self.selector, self.sel_opts
        if spec.needs_pool(opts):
            pool = dist.gather_cat(core.flatten_valid(old_ent, mask))  # [N_global]
            ones = torch.ones(1, pool.numel(), dtype=torch.bool)
            row = spec.select(ones, entropy=pool[None], **opts)  # [1, N_global]
            return spec(mask, selected=_my_slice(row, mask, dist), **opts)
        return spec(mask, entropy=old_ent, old_logp=old_logp, **opts)

    def select_for_loss(self, mask, old_logp, advantages, dist: Dist, generator):
        """Batch-wide selection of a covariance-based policy loss, or None (π_θ = π_old at step start)."""
        spec, opts = self.objective.policy_loss, self.objective.loss_options
        if not spec.needs_pool(opts):
            return None
        lp = dist.gather_cat(core.flatten_valid(old_logp, mask))[None]  # [1, N_global]
        adv = dist.gather_cat(core.flatten_valid(advantages.float(), mask))[None]
        self._warn_small_selection(lp.shape[1])
        row = spec.select(lp, lp, adv, torch.ones_like(lp, dtype=torch.bool), generator=generator, **opts)
        return _my_slice(row, mask, dist)

    def _warn_small_selection(self, n_tokens: int) -> None:
        """Once per run: Clip-Cov / KL-Cov select ``max(⌊ratio·N⌋, 1)`` tokens, and the papers' ratios
        (2e-4) are meant for ~10⁶ tokens per step; at CPU-sized batches that is one token."""
        ratio = self.objective.loss_options.get("select_ratio")
        if ratio is None or ratio * n_tokens >= 10 or self.warned:
            return
        self.warned = True
        log.warning("policy_loss=%s: select_ratio=%g of this step's %d response tokens selects %d token(s); the "
                    "method acts on a handful of tokens at this batch size (raise policy_loss.select_ratio or the "
                    "batch)", self.loss_name, ratio, n_tokens, max(int(ratio * n_tokens), 1))

    def run(self, actor, batch: PGBatch, dist: Dist, *, pad_id: int, step: int, generator: torch.Generator) -> dict:
        """Train the actor on one step's batch; returns metrics (reduced across ranks)."""
        t0 = time.time()
        N, mask = batch.response_ids.shape[0], batch.mask.bool()
        # step 1: π_old of the whole batch when anything batch-wide or off-policy needs it
        old_logp, old_ent = batch.old_logp, batch.old_entropy
        if old_logp is None and self.needs_old_pass():
            old_logp, old_ent = batched_logprobs(actor.module, batch.prompt_ids, batch.response_ids, pad_id=pad_id,
                                                 temperature=self.temp, micro_batch_size=self.micro,
                                                 with_entropy=True)
        # step 2: token selection and covariance selection, fixed for the step, pooled across ranks
        sel = self.select_tokens(mask, old_logp, old_ent, dist)
        loss_selected = self.select_for_loss(mask, old_logp, batch.advantages, dist, generator)
        skip = self.skippable_rows(batch, mask)
        diag = UpdateDiagnostics(batch, sel, skip, old_logp, old_ent)
        fwd = BatchForward(actor.module, batch, mask, pad_id=pad_id, temperature=self.temp)
        row_lens = response_spans(mask)  # [N] up to the last loss token (multi-turn masks have holes)
        for epoch in range(self.epochs):
            for k in range(self.minibatches):
                # step 3: this minibatch's rows (interleaved: the same global minibatch for any rank
                # count) and global denominators; skipped rows' loss is exactly 0, counted in the mean
                rows = torch.arange(k, N, self.minibatches)
                counts = dist.sum(core.aggregate_counts(sel.count_mask[rows]))  # every term's denominator
                if skipped_tokens := mask[rows][skip[rows]].sum().item():
                    diag.m.add("actor/pg_loss", 0.0, skipped_tokens)
                for idx, real in micro_batches(rows, skip, self.micro, actor.collective, batch.families,
                                               lens=row_lens, prompt_ids=batch.prompt_ids):
                    # step 4: forward, objective and backward of one micro-batch (a stand-in's gradient is zero)
                    self._micro_batch(actor, fwd, diag, old_logp, sel, loss_selected, counts, idx, real,
                                      epoch=epoch, first_pass=epoch == 0 and k == 0, step=step, generator=generator)
                # step 5: one optimizer step per minibatch
                diag.m.add("actor/grad_norm", actor.step())
        out = diag.reduce(dist, mask, fwd.tokens)
        out["actor/lr"] = actor.lr
        out["time/update"] = time.time() - t0
        return out

    def _micro_batch(self, actor, fwd: BatchForward, diag: UpdateDiagnostics, old_logp, sel: TokenSelection,
                     loss_selected, counts, idx, real: bool, *, epoch: int, first_pass: bool, step: int,
                     generator) -> None:
        """Forward, objective and backward of micro-batch ``idx`` (π_old = π_θ detached on-policy)."""
        b, width = fwd.batch, fwd.width(idx)
        want_ent = self.objective.entropy_coef != 0 or diag.wants_entropy(epoch)
        logp, ent = fwd(idx, width, with_entropy=want_ent, real=real)
        tokens = sel[idx, :width]
        pi_old = old_logp[idx, :width] if old_logp is not None else logp.detach()
        weight = None
        if self.correction["mode"] != "none" and b.rollout_logp is not None:
            weight, winfo = correction_weights(pi_old, b.rollout_logp[idx, :width], tokens.mask, **self.correction)
            if real:
                diag.m.add("actor/correction_kept_frac", float(winfo["kept_frac"]), tokens.mask.sum().item())
        loss, metrics = self.objective(
            logp, pi_old, b.advantages[idx, :width], tokens, counts, generator=generator, token_weight=weight,
            selected=None if loss_selected is None else loss_selected[idx, :width],
            ref_logp=None if b.ref_logp is None else b.ref_logp[idx, :width], entropy=ent)
        finite_or_raise(loss, step)
        diag.forward(idx, width, tokens, logp, ent, real=real, first_pass=first_pass, epoch=epoch)
        actor.backward(loss if real else loss * 0.0)
        if real:
            diag.loss(loss, metrics, counts, tokens.mask)
