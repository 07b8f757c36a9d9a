"""The KV cache of multi-turn episodes, carried from turn to turn (``rollout/multiturn.py``).

Without it every turn is one ``generate`` call on the whole context so far, so an episode's prompt
and earlier turns are prefilled again at every turn. ``TurnCache`` keeps the decoding state of the
live episodes between turns instead, and a turn prefills only what its cache does not hold yet: the
environment's message (and the previous turn's last sampled token, which the decoding loop samples
but never feeds). Each turn then runs the engine's own loop (``decode.decode_tree`` with a
``start`` state), so the sampling, the stop rules and the random streams are those of ``generate``.

Between turns (``next_turn``):

1. the rows of the episodes that go on are kept, and their caches *repacked*: each row's real
   columns (prompt, sampled tokens, environment tokens; not the left padding, not the columns a row
   computed after it stopped while others ran on) are gathered, left-padded to the longest, into a
   buffer with room for the new tokens and the next turn. Keys carry their rotary position already
   (position ids count real tokens only), so moving a column changes nothing but the order of a sum;
2. the new tokens are prefilled onto the cache in one forward, left-padded (padding columns masked
   for good), their position ids continuing each row's count;
3. the turn is decoded from that state with row compaction off (a row that stops stays in the batch
   and keeps its cache; its later columns are masked at the next repack).

Equivalence: the same tokens as the recompute path and the same log-probs up to float rounding
(fp32: the keys of a token computed one position at a time vs. in one prefill;
tests/rollout/test_turn_cache.py). What is prefilled is counted per episode (``env/prefill_tokens``).
"""
from __future__ import annotations

import torch

from rltrain.rollout.decode import (
    DecodeConfig,
    Level,
    _Batch,
    _check_sliding_window,
    _new_batch,
    _prefill,
    _Timer,
    accepts_logits_to_keep,
    cache_kwarg,
    decode_tree,
    model_device,
    model_dtype,
)
from rltrain.rollout.engine import SamplingParams
from rltrain.rollout.stops import StopStrings


class TurnCache:
    """The live episodes' decoding state between turns (rows in episode order).

    Args:
        model: the policy (eval mode; calls run under ``torch.inference_mode``).
        params: sampling of each turn (``n`` is used by the first turn only).
        eos_token_ids, pad_token_id, tokenizer: as ``generate``.
    """

    def __init__(self, model, params: SamplingParams, *, eos_token_ids: list[int], pad_token_id: int, tokenizer):
        self.model, self.params = model, params
        self.eos, self.pad = list(eos_token_ids), pad_token_id
        self.stop = StopStrings(params.stop_strings, tokenizer)
        self.device, self.dtype = model_device(model), model_dtype(model)
        if not self.dtype.is_floating_point:
            self.dtype = torch.float32
        self.neg = torch.finfo(self.dtype).min
        self.keep_arg = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
        self.cache_key = cache_kwarg(model)
        self.batch: _Batch | None = None
        self.ids: list[list[int]] = []  # per row: the tokens whose keys and values its cache holds, in order
        self.turn_start = 0  # cache column of the current turn's first fed token
        self.lengths: list[int] = []  # per row: tokens sampled in the current turn

    def _config(self, n: int, base_seed: int, caps: list[int]) -> DecodeConfig:
        p = self.params
        return DecodeConfig(branching=[n], segment_len=p.max_new_tokens, max_new_tokens=p.max_new_tokens,
                            temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, eos_token_ids=self.eos,
                            pad_token_id=self.pad, stop=self.stop, base_seed=base_seed, kv_cache="static",
                            compact_fraction=float("inf"),  # rows that stop keep their cache for the next turn
                            prompt_budgets=[min(int(c), p.max_new_tokens) for c in caps])

    def first_turn(self, prompts: list[list[int]], positions: list[int], caps: list[int], base_seed: int) -> Level:
        """Prefill one prompt per group and sample ``params.n`` turns each (``generate``'s call)."""
        cfg = self._config(self.params.n, base_seed, caps)
        lens = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        with torch.inference_mode():
            self.batch = _prefill(self.model, prompts, lens, cfg, self.dtype, self.neg, self.device, self.cache_key,
                                  self.keep_arg, _Timer(None))
            self.ids = [list(prompts[i]) for i in range(len(prompts)) for _ in range(self.params.n)]
            return self._decode(prompts, cfg, positions)

    def next_turn(self, rows: list[int], contexts: list[list[int]], positions: list[int], caps: list[int],
                  base_seed: int) -> tuple[Level, list[int]]:
        """Continue the episodes of ``rows`` (rows of the last turn, in order), whose whole token lists
        are now ``contexts``: prefill what their caches lack, sample one turn each. Returns the turn and
        the number of tokens prefilled per row.

        Raises:
            ValueError: a context that does not extend what its row's cache holds.
        """
        for r, ctx in zip(rows, contexts):
            if ctx[: len(self.ids[r])] != self.ids[r]:
                raise ValueError("TurnCache: an episode's tokens do not extend the tokens its cache holds")
        cfg = self._config(1, base_seed, caps)
        with torch.inference_mode():
            new = [ctx[len(self.ids[r]):] for r, ctx in zip(rows, contexts)]
            self._repack_and_prefill(rows, new, cfg)
            self.ids = [list(ctx) for ctx in contexts]
            return self._decode(contexts, cfg, positions), [len(x) for x in new]

    def _decode(self, prompts: list[list[int]], cfg: DecodeConfig, positions: list[int]) -> Level:
        self.turn_start = self.batch.cache_len
        (level,) = decode_tree(self.model, prompts, cfg, prompt_offset=positions, start=self.batch)
        fed = self.batch.cache_len - self.turn_start  # the loop feeds every sampled token but the last
        self.lengths = level.lengths.tolist()
        for r, L in enumerate(self.lengths):
            self.ids[r] += level.tokens[r, :min(L, fed)].tolist()
        return level

    def _repack_and_prefill(self, rows: list[int], new: list[list[int]], cfg: DecodeConfig) -> None:
        """Steps 1 and 2 of the module docstring: keep ``rows``, gather their real columns, prefill ``new``."""
        b, device = self.batch, self.device
        C = b.cache_len
        col = torch.arange(C, device=device)
        fed = torch.tensor([len(self.ids[r]) for r in range(b.bias.shape[0])], device=device)  # [R] real tokens
        turn_cols = torch.tensor([min(L, C - self.turn_start) for L in self.lengths], device=device)
        real = b.bias[:, 0, 0, :C] == 0  # [R, C] prompt / earlier columns (padding masked)
        real &= col < (self.turn_start + turn_cols).unsqueeze(1)  # not the columns a row computed after its stop
        keep = torch.tensor(rows, dtype=torch.long, device=device)
        real = real.index_select(0, keep)  # [K, C]
        counts = real.sum(1)  # [K]
        if not torch.equal(counts, fed.index_select(0, keep)):
            raise RuntimeError("TurnCache: a row's cache does not hold exactly its tokens")
        W, E = int(counts.max()), max(len(x) for x in new)
        capacity = W + E + self.params.max_new_tokens
        _check_sliding_window(self.model, capacity)
        # [K, W] source column of each new column, left-padded (padding points at column 0, masked)
        src = torch.zeros((len(rows), W), dtype=torch.long, device=device)
        for k in range(len(rows)):
            cols = real[k].nonzero().squeeze(1)
            src[k, W - cols.shape[0]:] = cols
        for layer in b.cache.layers:
            for name in ("keys", "values"):
                buf = getattr(layer, name).index_select(0, keep)[:, :, :C]  # [K, H, C, D]
                out = buf.new_empty((len(rows), buf.shape[1], capacity, buf.shape[3]))
                out[:, :, :W] = torch.gather(buf, 2, src[:, None, :, None].expand(-1, buf.shape[1], -1, buf.shape[3]))
                setattr(layer, name, out)
            layer.length, layer.capacity = W, capacity
        b.cache.capacity = capacity
        # the new tokens, left-padded to E, prefilled onto the repacked cache
        ids = torch.full((len(rows), E), self.pad, dtype=torch.long)
        for k, x in enumerate(new):
            ids[k, E - len(x):] = torch.tensor(x, dtype=torch.long)
        lens = torch.tensor([len(x) for x in new], device=device)  # [K]
        block = torch.arange(E, device=device)
        block_real = block.unsqueeze(0) >= (E - lens).unsqueeze(1)  # [K, E]
        positions = (counts.unsqueeze(1) + block.unsqueeze(0) - (E - lens).unsqueeze(1)).clamp_(min=0)  # [K, E]
        bias = torch.zeros((len(rows), 1, 1, capacity), dtype=self.dtype, device=device)  # [K, 1, 1, cap]
        bias[:, 0, 0, :W].masked_fill_(torch.arange(W, device=device).unsqueeze(0) < (W - counts).unsqueeze(1), self.neg)
        bias[:, 0, 0, W:W + E].masked_fill_(~block_real, self.neg)
        causal = block.unsqueeze(0) <= block.unsqueeze(1)  # [E(query), E(key)]
        mask = bias[:, :, :, :W + E].expand(len(rows), 1, E, W + E).clone()  # [K, 1, E, W + E]
        mask[:, :, :, W:].masked_fill_(~causal, self.neg)
        out = self.model(input_ids=ids.to(device), attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self.cache_key: b.cache}, **self.keep_arg)
        self.batch = _new_batch(b.cache, out.logits[:, -1].float(), bias, counts + lens, cfg, W + E, device,
                                self.cache_key)
