"""The training forward: per-token log-probs (and entropies) of given responses under a model.

This is the one forward every loop trains with and scores old / reference log-probs with; the
rollout engine's own log-probs (``generate``) are checked against it in tests/rollout.

Layout: each distinct prompt (the rows of a GRPO group, the continuations of an SPO cut state) is
encoded once with a KV cache; the cache rows are indexed out to the rows that use it
(differentiably: the prompt's gradient is the sum over its rows) and only the responses run on
top. Only response positions reach the LM head (``logits_to_keep``). Token alignment follows
docs/algorithms.md §0: the logit at position p predicts the token at p + 1; log-probs use
``logits / temperature``. Logits, log-softmax and entropy are computed in fp32.

Collective forwards: a module that says ``collective`` (a DeepSpeed engine on several ranks whose
forward gathers ZeRO-3 parameters, ``rltrain.engine.deepspeed.EngineModule``) returns the ``Dist``
whose ranks must make the same number of calls; ``batched_logprobs`` then pads its micro-batches
with one-token stand-in passes up to the busiest rank's count. Callers never pass ``dist``.
"""
from __future__ import annotations

import torch

from rltrain.algos.core import logprobs_from_logits, token_entropy
from rltrain.rollout.decode import cache_kwarg, output_cache


def collective(module):
    """The ``Dist`` whose ranks must call ``module`` in lockstep, or None (a plain module)."""
    return getattr(module, "collective", None)


def lockstep_slices(n: int, size: int, dist) -> list[slice | None]:
    """Micro-batch slices of ``n`` rows; with ``dist`` (see ``collective``) padded with None up to
    the largest count on any rank: a rank with fewer rows runs a stand-in pass for each None, so
    its collectives pair up with the other ranks' real ones instead of hanging."""
    out: list[slice | None] = [slice(s, s + size) for s in range(0, n, size)]
    if dist is not None and dist.enabled:
        most = int(dist.max(torch.tensor([len(out)], dtype=torch.long)).item())
        out += [None] * (most - len(out))
    return out


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


def unique_prompts(prompt_ids: list[list[int]]) -> tuple[list[list[int]], torch.Tensor]:
    """Distinct prompts in first-seen order and, per row, the index of its prompt among them."""
    first: dict[tuple[int, ...], int] = {}
    rows = [first.setdefault(tuple(p), len(first)) for p in prompt_ids]
    unique = [list(k) for k in first]
    return unique, torch.tensor(rows, dtype=torch.long)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` ``[U, P]`` of token lists (P = the longest)."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    attn = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
        attn[i, P - len(p):] = 1
    return ids, attn


def response_logits(model, prompt_ids, response_ids, *, pad_id: int) -> torch.Tensor:
    """Logits ``[B, T, V]`` where ``[:, t]`` predicts response token ``t``.

    Always two model calls, whatever the data: the distinct prompts with a KV cache, then the
    responses on top. Where each forward is a collective (ZeRO-3 on several ranks) every rank must
    make the same calls, and 1 and N ranks then compute the same thing in the same order. Same
    result as a packed forward (``pack``) up to float rounding, with the prompt tokens computed once
    per group instead of once per row (SmolLM2 on arith: 51 prompt tokens, ~50 response tokens, 8
    rows per prompt: ~40% fewer tokens through the model, forward and backward).
    """
    T = response_ids.shape[1]
    unique, row_of = unique_prompts(prompt_ids)
    ids, p_attn = left_pad(unique, pad_id)  # [U, P]
    p_pos = (p_attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=p_attn, position_ids=p_pos, logits_to_keep=1, use_cache=True)
    cache = output_cache(out)
    for layer in cache.layers:  # prompt KV [U, ...] → one row per sequence [B, ...], autograd intact
        layer.batch_select_indices(row_of)
    first = out.logits[row_of]  # [B, 1, V]: the prompt's last position predicts response token 0
    attn = torch.cat([p_attn[row_of], torch.ones_like(response_ids)], dim=1)  # [B, P + T]
    pos = p_attn.sum(-1)[row_of, None] + torch.arange(T)  # [B, T] responses continue each prompt's positions
    out = model(input_ids=response_ids, attention_mask=attn, position_ids=pos, **{cache_kwarg(model): cache},
                logits_to_keep=T, use_cache=True)
    return torch.cat([first, out.logits[:, :-1]], dim=1)


def response_logprobs(model, prompt_ids, response_ids, *, pad_id: int, temperature: float,
                      with_entropy: bool = False):
    """Per-token log-probs ``[B, T]`` (and entropies ``[B, T]``, else None) of the responses under
    ``softmax(logits / temperature)``, in the caller's grad mode: the entropy is differentiable
    when grad is on (detach it for logging). Padding positions hold values that mean nothing;
    callers mask them."""
    logits = response_logits(model, prompt_ids, response_ids, pad_id=pad_id).float()  # [B, T, V]
    lp = logprobs_from_logits(logits, response_ids, temperature=temperature)
    ent = token_entropy(logits, temperature=temperature) if with_entropy else None
    return lp, ent


@torch.no_grad()
def batched_logprobs(model, prompt_ids, response_ids, *, pad_id: int, temperature: float, micro_batch_size: int,
                     with_entropy: bool = False):
    """``response_logprobs`` without gradients, in micro-batches: ``([N, T], [N, T] | None)``.
    A collective ``model`` (see ``collective``) makes as many forwards as the busiest rank."""
    lps, ents = [], []
    for sl in lockstep_slices(len(prompt_ids), micro_batch_size, collective(model)):
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
