"""The training forward on prefix trees: SPO-tree edges whose contexts are other edges' full texts.

An SPO-tree edge is (context = the parent's full text, response = the child's segment). The
children of a depth-1 node have the context ``prompt + segment₁``, which is exactly the full text
of the depth-1 edge that ends at that node. ``rollout.forward.response_logits`` encodes each
distinct context from scratch, so the prompt and the depth-1 segments go through the model once
per depth-2 edge again; here a row whose context is another row's full text runs on top of that
row's KV cache instead (autograd flows through the shared cache: the gradient of
log π(y | x) through x's hidden states is kept, so the result is the same function, not an
approximation). The model then sees each tree's tokens about once: prompt, the depth-1 segments,
the depth-2 segments, … (AReaL reports the same idea for prefix trees; here for SPO's edges).

Calls: one for the distinct root contexts, then one per level (``levels`` = the trees' depth).
A row whose parent is absent from the batch (its edge had zero advantage, or was drawn by another
micro-batch) is a root: its context is encoded in the first call, as in ``response_logits``.

Padding inside the cache: level-k rows are right-padded to the level's longest segment, so a
child sees its parent's padding columns; the 2-D attention mask zeroes them and position ids
count real tokens only, so every row computes what it would compute alone.

Collective modules (ZeRO-3 on several ranks) take the plain two-call ``response_logits``: the
number of calls here depends on the data, and ranks must make the same calls.
"""
from __future__ import annotations

import torch

from rltrain.algos.core import logprobs_from_logits, token_entropy
from rltrain.rollout.decode import cache_kwarg, output_cache
from rltrain.rollout.forward import unique_prompts, collective, left_pad, response_logits


def plan_levels(prompt_ids: list[list[int]], response_ids: torch.Tensor, lengths: torch.Tensor,
                levels: int) -> tuple[list[int], list[int]]:
    """(parent, level) per row: ``parent[i] = j`` when row i's context equals row j's context +
    response (the first such row), else -1 (a root, level 0); levels are capped at ``levels - 1``
    (a deeper row becomes a root)."""
    B = len(prompt_ids)
    parent, level = [-1] * B, [0] * B
    full: dict[tuple[int, ...], int] = {}
    for i in sorted(range(B), key=lambda r: len(prompt_ids[r])):  # a parent's context is shorter
        j = full.get(tuple(prompt_ids[i]))
        if j is not None and level[j] + 1 < levels:
            parent[i], level[i] = j, level[j] + 1
        full.setdefault(tuple(prompt_ids[i]) + tuple(response_ids[i, : int(lengths[i])].tolist()), i)
    return parent, level


def tree_response_logits(model, prompt_ids, response_ids, lengths, *, pad_id: int, levels: int,
                         stats: dict | None = None) -> torch.Tensor:
    """Logits ``[B, T, V]`` where ``[:, t]`` predicts response token ``t`` (as ``response_logits``).

    Args:
        prompt_ids: each row's context (token ids, unpadded).
        response_ids: ``[B, T]`` right-padded responses; ``lengths``: ``[B]`` their real lengths (≥ 1).
        levels: the most levels of nesting to use (SPO-tree: the trees' depth, ``len(branching)``).
        stats: if given, ``tokens`` (real tokens through the model) is added to it.
    """
    B, T = response_ids.shape
    lengths = lengths.long()
    if collective(model) is not None or levels <= 1:
        if stats is not None:
            unique, _ = unique_prompts(prompt_ids)
            stats["tokens"] = stats.get("tokens", 0) + sum(map(len, unique)) + int(lengths.sum())
        return response_logits(model, prompt_ids, response_ids, pad_id=pad_id)
    parent, level = plan_levels(prompt_ids, response_ids, lengths, levels)
    rows = [[i for i in range(B) if level[i] == k] for k in range(levels)]

    # ---- call 1: the distinct root contexts
    roots = rows[0]
    unique, row_of = unique_prompts([prompt_ids[i] for i in roots])
    ids, p_attn = left_pad(unique, pad_id)  # [U, P]
    out = model(input_ids=ids, attention_mask=p_attn, position_ids=(p_attn.cumsum(-1) - 1).clamp(min=0),
                logits_to_keep=1, use_cache=True)
    cache = output_cache(out)
    # State of the current level's rows: which cache row each continues, the mask of the cache
    # columns, the position of its first token and the logits that predict it.
    sel = row_of  # [B_k] cache row of each row of this level
    attn_past = p_attn[row_of]  # [B_k, L]
    next_pos = p_attn.sum(-1)[row_of]  # [B_k]
    first = out.logits[row_of, -1]  # [B_k, V]
    tokens = sum(map(len, unique))

    pieces, order = [], []
    for k, level_rows in enumerate(rows):
        if not level_rows:
            break
        idx = torch.tensor(level_rows, dtype=torch.long)
        n, Tk = len(level_rows), int(lengths[idx].max())
        for layer in cache.layers:  # cache rows → one per row of this level, autograd intact
            layer.batch_select_indices(sel)
        attn = torch.cat([attn_past, torch.ones((n, Tk), dtype=torch.long)], dim=1)  # [B_k, L + Tk]
        pos = next_pos[:, None] + torch.arange(Tk)  # [B_k, Tk]
        out = model(input_ids=response_ids[idx, :Tk], attention_mask=attn, position_ids=pos, **{cache_kwarg(model): cache},
                    logits_to_keep=Tk, use_cache=True)
        logits = torch.cat([first[:, None], out.logits[:, :-1]], dim=1)  # [B_k, Tk, V]
        pieces.append(torch.nn.functional.pad(logits, (0, 0, 0, T - Tk)))
        order.extend(level_rows)
        tokens += int(lengths[idx].sum())
        if k + 1 < len(rows) and rows[k + 1]:
            where = {r: j for j, r in enumerate(level_rows)}
            sel = torch.tensor([where[parent[i]] for i in rows[k + 1]], dtype=torch.long)  # parents' rows
            resp_mask = (torch.arange(Tk)[None] < lengths[idx, None]).long()  # [B_k, Tk] real tokens only
            attn_past = torch.cat([attn_past, resp_mask], dim=1)[sel]
            next_pos = (next_pos + lengths[idx])[sel]
            first = out.logits[torch.arange(n), lengths[idx] - 1][sel]  # after each parent's last token
    if stats is not None:
        stats["tokens"] = stats.get("tokens", 0) + tokens
    inverse = torch.empty(B, dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(B)
    return torch.cat(pieces)[inverse]


def tree_response_logprobs(model, prompt_ids, response_ids, lengths, *, pad_id: int, temperature: float, levels: int,
                           with_entropy: bool = False, stats: dict | None = None):
    """``rollout.forward.response_logprobs`` on prefix trees: ``([B, T], [B, T] | None)``."""
    logits = tree_response_logits(model, prompt_ids, response_ids, lengths, pad_id=pad_id, levels=levels,
                                  stats=stats).float()  # [B, T, V]
    lp = logprobs_from_logits(logits, response_ids, temperature=temperature)
    ent = token_entropy(logits, temperature=temperature) if with_entropy else None
    return lp, ent
