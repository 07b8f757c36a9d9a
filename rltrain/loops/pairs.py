"""Tokenised (prompt, response) examples for the offline loops (SFT, DPO): rendering, EOS,
truncation, padding, and summed response log-probs.

Conventions (docs/algorithms.md §1, eric-mitchell/direct-preference-optimization):
- Prompt and responses are tokenised separately and concatenated, so the response tokens are
  exactly what the policy would generate after the prompt the rollout engine sees.
- Every response ends with an end-of-sequence token that counts in the loss: a chat template's
  end-of-turn token when the rendered response already contains one (whatever the template adds
  after it, e.g. a newline, is dropped: generation stops at that token), else the tokenizer's EOS
  appended.
- Truncation, when prompt + longest response exceeds ``max_length``: first the prompt is cut to
  ``max_prompt_length`` (keeping its end or its start), then, if still too long, every response is
  cut to ``max_length − max_prompt_length`` (it may lose its EOS, as in the reference code).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rltrain.algos.core import masked_sum
from rltrain.data import PreferencePair, render_pair, to_sft_pairs
from rltrain.rollout.forward import collective, lockstep_slices, response_logprobs
from rltrain.types import Sample


@dataclass
class Encoded:
    """One tokenised example: a prompt and its responses ([response] for SFT,
    [chosen, rejected] for DPO)."""

    prompt: list[int]
    responses: list[list[int]]


def response_tokens(tokenizer, text: str, eos_ids: list[int]) -> list[int]:
    """Token ids of a rendered response, ending at an EOS token (see module docstring)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    last = max((i for i, t in enumerate(ids) if t in eos_ids), default=None)
    return ids[: last + 1] if last is not None else ids + [tokenizer.eos_token_id]


def truncate(prompt: list[int], responses: list[list[int]], *, max_length: int, max_prompt_length: int,
             mode: str) -> tuple[list[int], list[list[int]]]:
    """Apply the truncation rule of the module docstring; ``mode``: keep_end | keep_start."""
    if len(prompt) + max(len(r) for r in responses) > max_length and len(prompt) > max_prompt_length:
        prompt = prompt[-max_prompt_length:] if mode == "keep_end" else prompt[:max_prompt_length]
    if len(prompt) + max(len(r) for r in responses) > max_length:
        responses = [r[: max_length - max_prompt_length] for r in responses]
    return prompt, responses


def encode_examples(tokenizer, examples: list[tuple], *, eos_ids: list[int], system_prompt: str | None,
                    use_chat_template: bool, max_length: int, max_prompt_length: int,
                    truncation: str) -> list[Encoded]:
    """Tokenise ``(prompt, response, ...)`` tuples (text or chat messages) into ``Encoded``."""
    out = []
    for ex in examples:
        prompt, *responses = ex
        # render_pair renders two responses; SFT (one response) passes it twice.
        pair = PreferencePair(prompt=prompt, chosen=responses[0], rejected=responses[-1])
        p_text, c_text, r_text = render_pair(tokenizer, pair, system_prompt=system_prompt,
                                             use_chat_template=use_chat_template)
        p_ids = tokenizer(p_text, add_special_tokens=False).input_ids
        texts = [c_text] if len(responses) == 1 else [c_text, r_text]
        resp = [response_tokens(tokenizer, t, eos_ids) for t in texts]
        p_ids, resp = truncate(p_ids, resp, max_length=max_length, max_prompt_length=max_prompt_length,
                               mode=truncation)
        out.append(Encoded(p_ids, resp))
    return out


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists: ``(ids [B, T] long, mask [B, T] float)``."""
    T = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T))
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1.0
    return ids, mask


def token_logps(model, prompts: list[list[int]], responses: list[list[int]], *, pad_id: int):
    """Per-token log-probs of the responses at temperature 1: ``(logp [B, T], mask [B, T])``."""
    ids, mask = pad_right(responses, pad_id)
    lp, _ = response_logprobs(model, prompts, ids, pad_id=pad_id, temperature=1.0)
    return lp, mask


def pair_logps(model, batch: list[Encoded], *, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of chosen and rejected, ``([m], [m])``, from ONE concatenated forward of
    the 2m sequences (chosen rows first), as in the reference implementation."""
    prompts = [e.prompt for e in batch] * 2
    responses = [e.responses[0] for e in batch] + [e.responses[1] for e in batch]
    lp, mask = token_logps(model, prompts, responses, pad_id=pad_id)  # [2m, T]
    seq = masked_sum(lp, mask, dim=-1)  # [2m]
    return seq[: len(batch)], seq[len(batch):]


def stand_in_pair(pad_id: int) -> Encoded:
    """A one-token pair for a rank's lockstep passes (``rollout.forward.lockstep_slices``)."""
    return Encoded([pad_id], [[pad_id], [pad_id]])


@torch.no_grad()
def batched_pair_logps(model, batch: list[Encoded], *, pad_id: int, micro_batch_size: int) -> torch.Tensor:
    """``[n, 2]`` summed (chosen, rejected) log-probs without gradients, in micro-batches of
    ``micro_batch_size`` sequences; a collective ``model`` makes as many forwards as the busiest rank."""
    per = max(1, micro_batch_size // 2)
    was_training = model.training
    model.eval()
    out = []
    try:
        for sl in lockstep_slices(len(batch), per, collective(model)):
            part = [stand_in_pair(pad_id)] if sl is None else batch[sl]
            lp = torch.stack(pair_logps(model, part, pad_id=pad_id), dim=1)
            if sl is not None:
                out.append(lp)
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, 2))


def sft_examples(items: list) -> list[tuple]:
    """SFT's (prompt, response) tuples: a sample's worked solution, or a preference pair's chosen."""
    if items and isinstance(items[0], PreferencePair):
        return [(p.prompt, p.chosen) for p in items]
    return [(p.prompt, p.response) for p in to_sft_pairs(items)]


def pair_examples(pairs: list[PreferencePair]) -> list[tuple]:
    """DPO's (prompt, chosen, rejected) tuples."""
    return [(p.prompt, p.chosen, p.rejected) for p in pairs]


def prompt_samples(items: list) -> list[Sample]:
    """Prompts to generate from: ``Sample``s as they are, preference pairs as
    ``Sample(question=prompt, answer=meta["answer"])`` (empty answer when the pair has none)."""
    if not items or isinstance(items[0], Sample):
        return list(items)
    return [Sample(id=p.id, question=p.prompt, answer=str(p.meta.get("answer", ""))) for p in items]
