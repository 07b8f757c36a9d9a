"""Per-token log-probs (and entropies) of given responses, recomputed with one forward pass.

Each micro-batch is laid out as ``[left padding | prompt | response (right-padded)]``; padding is
masked out of attention and position ids count real tokens only, matching ``generate``. Only the
response positions reach the LM head (``logits_to_keep``). Token alignment follows ALGORITHMS.md §0:
the logit at position p predicts the token at p + 1; log-probs use ``logits / temperature``.
"""
from __future__ import annotations

import torch

from rltrain.algos.core import logprobs_from_logits, token_entropy
from rltrain.rollout.decode import accepts_logits_to_keep, model_device


def sequence_logprobs(
    model,
    prompt_ids: list[list[int]],
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float,
    micro_batch_size: int,
    with_entropy: bool = False,
    pad_token_id: int = 0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of every response token under ``softmax(model logits / temperature)``.

    Runs under the caller's grad mode and model mode (wrap in ``torch.no_grad()`` for old/reference
    log-probs; leave grad on for the policy loss).

    Args:
        model: a ``transformers`` causal LM.
        prompt_ids: N prompts (unpadded token ids).
        response_ids: ``[N, T]`` long, right-padded.
        response_mask: ``[N, T]``, 1 on response tokens (EOS included), 0 on padding.
        temperature: the sampling temperature (> 0; use 1 for greedy rollouts).
        micro_batch_size: sequences per forward pass.
        with_entropy: also return the entropy of each position's distribution.
        pad_token_id: the id written into padding positions (their value never matters).

    Returns:
        ``logprobs [N, T]`` float32, 0 where the mask is 0; with ``with_entropy`` also
        ``entropy [N, T]`` float32 (0 where the mask is 0).
    """
    n, width_r = response_ids.shape
    if len(prompt_ids) != n:
        raise ValueError(f"sequence_logprobs: {len(prompt_ids)} prompts for {n} responses")
    if micro_batch_size < 1:
        raise ValueError(f"sequence_logprobs: micro_batch_size must be >= 1, got {micro_batch_size}")
    device = model_device(model)
    keep = accepts_logits_to_keep(model)
    resp_mask = response_mask.to(torch.bool)  # [N, T]
    out_lp, out_ent = [], []
    for start in range(0, n, micro_batch_size):
        prompts = prompt_ids[start : start + micro_batch_size]
        resp = response_ids[start : start + micro_batch_size]  # [b, T]
        rmask = resp_mask[start : start + micro_batch_size]  # [b, T]
        b = len(prompts)
        width_p = max(len(p) for p in prompts)
        ids = torch.full((b, width_p + width_r), pad_token_id, dtype=torch.long)  # [b, P+T]
        attn = torch.zeros((b, width_p + width_r), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width_p - len(p) : width_p] = torch.tensor(p, dtype=torch.long)
            attn[i, width_p - len(p) : width_p] = 1
        ids[:, width_p:] = torch.where(rmask, resp, torch.full_like(resp, pad_token_id))
        attn[:, width_p:] = rmask.long()
        positions = (attn.cumsum(-1) - 1).clamp_(min=0)  # [b, P+T]
        kwargs = {"logits_to_keep": width_r + 1} if keep else {}
        out = model(
            input_ids=ids.to(device),
            attention_mask=attn.to(device),
            position_ids=positions.to(device),
            use_cache=False,
            **kwargs,
        )
        logits = out.logits[:, -(width_r + 1) : -1]  # [b, T, V] logits[:, t] predicts resp[:, t]
        labels = torch.where(rmask, resp, torch.full_like(resp, -100)).to(device)  # [b, T]
        out_lp.append(logprobs_from_logits(logits, labels, temperature))
        if with_entropy:
            ent = token_entropy(logits, temperature)  # [b, T]
            out_ent.append(ent * rmask.to(ent.device, ent.dtype))
    logprobs = torch.cat(out_lp)
    if with_entropy:
        return logprobs, torch.cat(out_ent)
    return logprobs
