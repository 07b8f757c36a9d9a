"""The KV cache of multi-turn episodes, carried from turn to turn (``rollout/multiturn.py``).

Without it every turn is one ``generate`` call on the whole context so far, so an episode's prompt
and earlier turns are prefilled again at every turn. ``TurnCache`` keeps the decoding state of the
live episodes between turns instead, and a turn prefills only what its cache does not hold yet: the
environment's message (and the previous turn's last sampled token, which the decoding loop samples
but never feeds). Each turn then runs the engine's own loop (``decode.decode_tree`` with a
``start`` state), so the sampling, the stop rules and the random streams are those of ``generate``.

During a turn the loop drops rows that stopped from its batch as usual (compaction); each row's
cache is kept as it leaves (``DecodeConfig.on_drop``, and at the end of the turn for the rows left).
Between turns (``next_turn``):

1. the caches of the episodes that go on are *repacked*: each row's real columns (prompt, sampled
   tokens, environment tokens; not the left padding, not the columns a row computed after it stopped
   while others ran on) are gathered, left-padded to the longest, into a new cache with room for the
   new tokens and the next turn. Keys carry their rotary position already (position ids count real
   tokens only), so moving a column changes nothing but the order of a sum;
2. the new tokens are prefilled onto that cache in one forward, left-padded (padding columns masked
   for good), their position ids continuing each row's count;
3. the turn is decoded from that state.

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
    output_cache,
)
from rltrain.rollout.engine import SamplingParams
from rltrain.rollout.kv_cache import PreallocatedCache, PreallocatedLayer
from rltrain.rollout.stops import StopStrings


class _Kept:
    """One episode's cache at the end of a turn: its batch row as it left the batch.

    Attributes:
        layers: per layer ``(keys, values)``, each ``[H, C, D]`` (C = the batch's cache length then).
        bias: ``[C]`` additive mask (0 on real columns so far, the dtype's minimum on padding).
        fed: this turn's sampled tokens in the cache (its columns ``turn_start .. turn_start + fed - 1``; the
            columns it computed after it stopped, while waiting to leave the batch, are not counted).
    """

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]], bias: torch.Tensor, fed: int):
        self.layers, self.bias, self.fed = layers, bias, fed


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
        self.ids: list[list[int]] = []  # per row: the tokens whose keys and values its cache holds, in order
        self.kept: dict[int, _Kept] = {}  # per row of the last turn: its cache as it left the batch
        self.turn_start = 0  # cache column of the turn's first fed token

    def _config(self, n: int, base_seed: int, caps: list[int]) -> DecodeConfig:
        p = self.params
        return DecodeConfig(branching=[n], segment_len=p.max_new_tokens, max_new_tokens=p.max_new_tokens,
                            temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, eos_token_ids=self.eos,
                            pad_token_id=self.pad, stop=self.stop, base_seed=base_seed, kv_cache="static",
                            prompt_budgets=[min(int(c), p.max_new_tokens) for c in caps], on_drop=self._keep)

    def first_turn(self, prompts: list[list[int]], positions: list[int], caps: list[int], base_seed: int) -> Level:
        """Prefill one prompt per group and sample ``params.n`` turns each (``generate``'s call)."""
        cfg = self._config(self.params.n, base_seed, caps)
        lens = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        with torch.inference_mode():
            batch = _prefill(self.model, prompts, lens, cfg, self.dtype, self.neg, self.device, self.cache_key,
                             self.keep_arg, _Timer(None))
            self.ids = [list(prompts[i]) for i in range(len(prompts)) for _ in range(self.params.n)]
            return self._decode(batch, prompts, cfg, positions)

    def next_turn(self, rows: list[int], contexts: list[list[int]], positions: list[int], caps: list[int],
                  base_seed: int) -> tuple[Level, list[int]]:
        """Continue the episodes of ``rows`` (rows of the last turn, in order), whose whole token lists
        are now ``contexts``: prefill what their caches lack, sample one turn each. Returns the turn and
        the number of tokens prefilled per row.

        Raises:
            ValueError: a context that does not extend what its row's cache holds (by one token at least).
        """
        for r, ctx in zip(rows, contexts):
            if len(ctx) <= len(self.ids[r]) or ctx[: len(self.ids[r])] != self.ids[r]:
                raise ValueError("TurnCache: an episode's tokens do not extend the tokens its cache holds")
        cfg = self._config(1, base_seed, caps)
        with torch.inference_mode():
            new = [ctx[len(self.ids[r]):] for r, ctx in zip(rows, contexts)]
            batch = self._repack_and_prefill(rows, new, cfg)
            self.ids = [list(ctx) for ctx in contexts]
            return self._decode(batch, contexts, cfg, positions), [len(x) for x in new]

    def _keep(self, batch: _Batch, rows: torch.Tensor, nodes: torch.Tensor) -> None:
        """Keep the caches of ``rows`` (nodes ``nodes``) of ``batch`` as they leave it (``DecodeConfig.on_drop``)."""
        C, fed = batch.cache_len, batch.cache_len - self.turn_start
        per_layer = [(layer.keys.index_select(0, rows)[:, :, :C], layer.values.index_select(0, rows)[:, :, :C])
                     for layer in batch.cache.layers]  # [R, H, C, D] each
        bias = batch.bias[:, 0, 0, :C].index_select(0, rows)  # [R, C]
        for j, node in enumerate(nodes.tolist()):
            self.kept[node] = _Kept([(k[j], v[j]) for k, v in per_layer], bias[j], fed)

    def _decode(self, batch: _Batch, prompts: list[list[int]], cfg: DecodeConfig, positions: list[int]) -> Level:
        self.kept, self.turn_start = {}, batch.cache_len
        (level,) = decode_tree(self.model, prompts, cfg, prompt_offset=positions, start=batch)
        left = [node for node in range(level.lengths.shape[0]) if node not in self.kept]  # in node order
        self._keep(batch, torch.arange(len(left), device=self.device), torch.tensor(left))
        for r, L in enumerate(level.lengths.tolist()):
            # the loop feeds every sampled token but the last; a row that stopped before it left fed more (ignored)
            self.kept[r].fed = min(L, self.kept[r].fed)
            self.ids[r] += level.tokens[r, :self.kept[r].fed].tolist()
        return level

    def _repack_and_prefill(self, rows: list[int], new: list[list[int]], cfg: DecodeConfig) -> _Batch:
        """Steps 1 and 2 of the module docstring: gather the real columns of ``rows``, prefill ``new``."""
        device, K = self.device, len(rows)
        real = []  # per row: its real columns (prompt, earlier turns, this turn's fed tokens)
        for r in rows:
            kept = self.kept[r]
            col = torch.arange(kept.bias.shape[0], device=device)
            cols = ((kept.bias == 0) & (col < self.turn_start + kept.fed)).nonzero().squeeze(1)
            if cols.shape[0] != len(self.ids[r]):
                raise RuntimeError("TurnCache: a row's cache does not hold exactly its tokens")
            real.append(cols)
        counts = torch.tensor([c.shape[0] for c in real], device=device)  # [K]
        W, E = int(counts.max()), max(len(x) for x in new)
        capacity = W + E + self.params.max_new_tokens
        _check_sliding_window(self.model, capacity)
        cache = PreallocatedCache(capacity)
        for i, (k0, v0) in enumerate(self.kept[rows[0]].layers):
            layer = PreallocatedLayer(capacity)
            layer.lazy_initialization(k0.new_empty((K, *k0.shape[:1], 1, k0.shape[-1])),
                                      v0.new_empty((K, *v0.shape[:1], 1, v0.shape[-1])))
            layer.keys[:, :, :W].zero_()  # padding: masked, but never uninitialised memory (a NaN key poisons the sum)
            layer.values[:, :, :W].zero_()
            for k, (r, cols) in enumerate(zip(rows, real)):  # left-padded: row k's columns end at W
                keys, values = self.kept[r].layers[i]
                layer.keys[k, :, W - cols.shape[0]:W] = keys.index_select(1, cols)
                layer.values[k, :, W - cols.shape[0]:W] = values.index_select(1, cols)
            layer.length = W
            cache.layers.append(layer)
        self.kept = {}
        # the new tokens, left-padded to E, prefilled onto the repacked cache
        ids = torch.full((K, E), self.pad, dtype=torch.long)
        for k, x in enumerate(new):
            ids[k, E - len(x):] = torch.tensor(x, dtype=torch.long)
        lens = torch.tensor([len(x) for x in new], device=device)  # [K]
        block = torch.arange(E, device=device)
        block_real = block.unsqueeze(0) >= (E - lens).unsqueeze(1)  # [K, E]
        positions = (counts.unsqueeze(1) + block.unsqueeze(0) - (E - lens).unsqueeze(1)).clamp_(min=0)  # [K, E]
        bias = torch.zeros((K, 1, 1, capacity), dtype=self.dtype, device=device)  # [K, 1, 1, cap] additive mask
        bias[:, 0, 0, :W].masked_fill_(torch.arange(W, device=device).unsqueeze(0) < (W - counts).unsqueeze(1), self.neg)
        bias[:, 0, 0, W:W + E].masked_fill_(~block_real, self.neg)
        causal = block.unsqueeze(0) <= block.unsqueeze(1)  # [E(query), E(key)]
        mask = bias[:, :, :, :W + E].expand(K, 1, E, W + E).clone()  # [K, 1, E, W + E]
        mask[:, :, :, W:].masked_fill_(~causal, self.neg)
        out = self.model(input_ids=ids.to(device), attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self.cache_key: cache}, **self.keep_arg)
        returned = output_cache(out)
        return _new_batch(returned if returned is not None else cache, out.logits[:, -1].float(), bias, counts + lens,
                          cfg, W + E, device, self.cache_key)
