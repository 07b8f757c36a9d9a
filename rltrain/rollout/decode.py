"""The batched, KV-cached decoding loop shared by ``generate`` and the SPO tree sampler.

Both sample a tree per prompt: the prompt is the root; depth d has ``branching[d-1]`` children per
expanded node; a non-final node holds at most ``segment_len`` tokens; final-depth nodes run until
EOS / a stop string / ``max_new_tokens`` (counted from the root). ``generate`` is the one-level
tree ``branching=[n], segment_len=max_new_tokens``.

One loop, one batch. Every live sequence sits at the same response position (all nodes of a depth
start together and run the same number of steps), so the batch moves depth by depth:

    prefill all prompts (left-padded, one forward, logits of the last position only)
    for each depth:
        fork: index_select the KV cache, the last logits and the row state so that each live row
              becomes ``b`` rows (the shared prefix is encoded once, never re-encoded)
        repeat up to the depth's budget:
            sample one token per row (row uniforms from the node's own stream, see sampling.py)
            stop rows at EOS / stop strings; drop stopped rows from the batch (and their cache
            rows) once they are a ``compact_fraction`` of it
            forward the sampled tokens (one position each) → next logits

Padding and positions: prompts are left-padded to the longest; a per-row additive bias
``[B, 1, 1, capacity]`` (0, or the dtype's minimum on padding columns) is sliced to the current
length and passed as the 4-D attention mask, which transformers uses as is (no mask building per
step; an additive float mask suits both the "sdpa" and "eager" attention implementations);
position ids count real tokens only, so a prompt gets the same positions alone or padded.
"""
from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from rltrain.engine.model import final_norm
from rltrain.rollout.kv_cache import PreallocatedCache
from rltrain.rollout.sampling import node_seed, sample_next, segment_uniforms
from rltrain.rollout.stops import StopStrings

KV_CACHES = ("static", "dynamic")


@dataclass
class Level:
    """The nodes of one depth (depth = index + 1), in order: children of one parent are
    consecutive, and parents come in their own level's order (BFS order).

    Attributes:
        parent: ``[K]`` long, index of each node's parent in the previous level (the prompt index
            for the first level).
        child_index: ``[K]`` long, position of the node among its parent's children.
        tokens: ``[K, budget]`` long, the node's segment, right-padded with ``pad_token_id``.
        logprobs: ``[K, budget]`` float32, log-prob of each token under logits / T (0 on padding).
        entropies: ``[K, budget]`` float32, entropy of softmax(logits / T) at each token (0 on padding).
        lengths: ``[K]`` long, tokens in each segment.
        finish: per node "stop" (EOS or stop string) or "length" (its token budget ran out).
        expanded: ``[K]`` bool, the node has children in the next level.
    """

    parent: torch.Tensor
    child_index: torch.Tensor
    tokens: torch.Tensor
    logprobs: torch.Tensor
    entropies: torch.Tensor
    lengths: torch.Tensor
    finish: list[str]
    expanded: torch.Tensor


@dataclass
class DecodeConfig:
    """Everything the loop needs besides the model and prompts (plain values, no config objects)."""

    branching: list[int]
    segment_len: int
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    eos_token_ids: list[int]
    pad_token_id: int
    stop: StopStrings
    base_seed: int
    kv_cache: str = "static"
    compact_fraction: float = 0.125
    prompt_budgets: list[int] | None = None  # per-prompt cap on new tokens (one-level trees only)
    # progress: called after each decoded position as on_position(done, max_new_tokens)
    on_position: Callable[[int, int], None] | None = None
    # shared prefill: prompt i is a prefix of sources[source_of[i]]; the sources are encoded once and
    # each prompt's KV is its source's first len(prompt) positions (SPO-chain's cut states of a row)
    sources: list[list[int]] | None = None
    source_of: list[int] | None = None
    # called as on_drop(batch, rows, nodes) just before rows [R] (nodes [R]) leave the batch at a compaction
    # (multi-turn episodes keep the caches of turns that ended: rollout/turn_cache.py)
    on_drop: Callable[["_Batch", torch.Tensor, torch.Tensor], None] | None = None


class _Timer:
    """Accumulates wall-clock seconds per phase into ``stats`` (a no-op when stats is None)."""

    def __init__(self, stats: dict[str, float] | None):
        self.stats = stats

    @contextmanager
    def __call__(self, name: str):
        if self.stats is None:
            yield
            return
        t0 = time.perf_counter()
        yield
        self.stats[name] = self.stats.get(name, 0.0) + time.perf_counter() - t0


def model_device(model) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    return next(model.parameters()).device


def model_dtype(model) -> torch.dtype:
    dt = getattr(model, "dtype", None)
    if isinstance(dt, torch.dtype):
        return dt
    return next(model.parameters()).dtype


def cache_kwarg(model) -> str:
    """The forward's KV-cache keyword: ``cache`` (transformers >= 5.x; ``past_key_values`` is
    deprecated there and warns on every call) or ``past_key_values`` (older models / versions)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out):
    """The KV cache a forward returned (``out.cache``, or ``out.past_key_values`` before 5.x)."""
    for key in ("cache", "past_key_values"):
        if key in out:  # a ModelOutput lists its non-None fields
            return out[key]
    return None


def accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _check_sliding_window(model, capacity: int) -> None:
    """Our 4-D mask is full causal attention; refuse models whose sliding window would matter."""
    config = getattr(model, "config", None)
    if config is None:
        return
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    layer_types = getattr(text, "layer_types", None) or []
    uses_window = any("sliding" in t for t in layer_types) or bool(getattr(text, "use_sliding_window", False))
    if window and uses_window and capacity > window:
        raise NotImplementedError(
            f"prompt + response length {capacity} exceeds the model's sliding window {window}; "
            "the rollout engine only implements full causal attention"
        )


def decode_tree(
    model,
    prompts: list[list[int]],
    cfg: DecodeConfig,
    stats: dict[str, float] | None = None,
    first_uniforms: torch.Tensor | None = None,
    prompt_offset: int | list[int] = 0,
    start: "_Batch | None" = None,
) -> list[Level]:
    """Sample the trees described in the module docstring. Call under ``torch.inference_mode()``.

    Args:
        first_uniforms: optional ``[P * branching[0], budget]`` float64 table replacing the
            seeded streams of the first level (used to replay tree paths as independent sequences).
        prompt_offset: index of ``prompts[0]`` in the caller's whole prompt list (the random
            streams depend on it, so sampling prompts in chunks gives the same samples), or each
            prompt's index (prompts that are not consecutive there: multi-turn episodes still running).
        start: the decoding state to continue from instead of prefilling ``prompts`` (one row per
            prompt, its cache holding the prompt: multi-turn episodes carry their cache across turns,
            rollout/turn_cache.py). It is advanced in place, so after the call it holds the state at
            the end of a one-level tree: the rows not dropped at a compaction (``cfg.on_drop``), in
            node order.

    Returns:
        One ``Level`` per depth that has nodes (index 0 = the prompts' children).
    """
    timer = _Timer(stats)
    device = model_device(model)
    dtype = model_dtype(model)
    if not dtype.is_floating_point:
        dtype = torch.float32
    neg = torch.finfo(dtype).min
    depth_count = len(cfg.branching)
    if cfg.prompt_budgets is not None and (depth_count != 1 or len(cfg.prompt_budgets) != len(prompts)
                                           or min(cfg.prompt_budgets) < 1):
        raise ValueError("decode_tree: prompt_budgets needs one level and one budget >= 1 per prompt")
    if cfg.sources is not None:
        if cfg.source_of is None or len(cfg.source_of) != len(prompts) or any(
                not 0 <= r < len(cfg.sources) or cfg.sources[r][: len(p)] != list(p)
                for p, r in zip(prompts, cfg.source_of)):
            raise ValueError("decode_tree: every prompt must be a prefix of its source (sources[source_of[i]])")
    keep_arg = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    cache_key = cache_kwarg(model)
    eos = torch.tensor(sorted(set(cfg.eos_token_ids)), dtype=torch.long, device=device)

    n_prompts = len(prompts)
    prompt_lens = torch.tensor([len(p) for p in prompts], dtype=torch.long)  # [P]
    # shared prefixes need the final norm's output (the first logits of each prompt); a model whose
    # norm is not found gets the plain prefill: the same samples, each prefix encoded again
    norm = final_norm(model) if cfg.sources is not None else None
    if start is not None:
        batch = start
    elif norm is not None and model.get_output_embeddings() is not None:
        with timer("prefill"):
            batch = _prefill_shared(model, norm, prompts, prompt_lens, cfg, dtype, neg, device, cache_key, keep_arg)
    else:
        batch = _prefill(model, prompts, prompt_lens, cfg, dtype, neg, device, cache_key, keep_arg, timer)
    positions = prompt_offset if isinstance(prompt_offset, list) else [prompt_offset + i for i in range(n_prompts)]
    paths: list[tuple[int, ...]] = [(int(p),) for p in positions]  # seed path of each row
    row_parent = torch.arange(n_prompts)  # [rows] node index (previous level) of each batch row
    generated = 0  # response tokens so far, identical for every live row

    levels: list[Level] = []
    for depth in range(depth_count):
        b = cfg.branching[depth]
        last = depth == depth_count - 1
        budget = min(cfg.max_new_tokens - generated, cfg.max_new_tokens if last else cfg.segment_len)
        # ---- fork every row into b children (KV cache rows copied: the prefix is not re-encoded)
        rows = batch.next_pos.shape[0]
        with timer("fork"):
            batch.fork(b)
        parent = row_parent.repeat_interleave(b)  # [K]
        child_index = torch.arange(b).repeat(rows)  # [K]
        paths = [paths[r] + (j,) for r in range(rows) for j in range(b)]
        n_nodes = len(paths)
        with timer("rng"):
            if depth == 0 and first_uniforms is not None:
                uniforms = first_uniforms.to(device)  # [K, budget]
            else:
                uniforms = segment_uniforms([node_seed(cfg.base_seed, p) for p in paths], budget).to(device)
        tokens = torch.full((n_nodes, budget), cfg.pad_token_id, dtype=torch.long, device=device)
        logprobs = torch.zeros((n_nodes, budget), dtype=torch.float32, device=device)
        entropies = torch.zeros((n_nodes, budget), dtype=torch.float32, device=device)
        lengths = torch.zeros(n_nodes, dtype=torch.long, device=device)
        stopped = torch.zeros(n_nodes, dtype=torch.bool, device=device)
        node = torch.arange(n_nodes, device=device)  # [B] node of each batch row
        # [K] each node's own token cap (its prompt's budget): a row stops, as "length", on reaching it,
        # so no token is generated past it. The random streams are per node and position, so a capped
        # row's tokens are exactly the first ``cap`` tokens of the same row without the cap.
        node_cap = (torch.tensor(cfg.prompt_budgets, dtype=torch.long, device=device)[parent.to(device)]
                    if cfg.prompt_budgets is not None else None)
        alive = torch.ones(n_nodes, dtype=torch.bool, device=device)  # [B] rows not stopped yet
        n_alive = n_nodes

        for t in range(budget):
            with timer("sample"):
                ent = torch.empty(node.shape[0], dtype=torch.float32, device=device)
                tok, lp = sample_next(
                    batch.logits, uniforms[node, t], temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                    entropy=ent,
                )  # [B], [B]
                batch.logits = None  # consumed (sample_next scales them in place)
                live_nodes = node[alive]
                tokens[live_nodes, t] = tok[alive]
                logprobs[live_nodes, t] = lp[alive]
                entropies[live_nodes, t] = ent[alive]
                lengths[live_nodes] = t + 1
                hit = torch.isin(tok, eos) & alive  # [B]
            if batch.history is not None:
                with timer("stop_strings"):
                    batch.history[:, generated + t] = tok
                    hit |= cfg.stop.hits(batch.history, generated + t + 1).to(device) & alive
            if bool(hit.any()):
                stopped[node[hit]] = True
                alive &= ~hit
                n_alive = int(alive.sum())
            if node_cap is not None:
                capped = alive & (node_cap[node] <= t + 1)  # [B] budget used up, not stopped
                if bool(capped.any()):
                    alive &= ~capped
                    n_alive = int(alive.sum())
            if cfg.on_position is not None:
                cfg.on_position(generated + t + 1, cfg.max_new_tokens)
            if n_alive == 0 or t == budget - 1:
                break
            # Stopped rows stay in the batch (computed, ignored) until they are a fraction of it:
            # dropping them copies the whole KV cache.
            if alive.shape[0] - n_alive >= max(1, cfg.compact_fraction * alive.shape[0]):
                with timer("compact"):
                    if cfg.on_drop is not None:
                        gone = (~alive).nonzero().squeeze(1)
                        cfg.on_drop(batch, gone, node[gone])
                    node, tok = batch.select(alive.nonzero().squeeze(1), node, tok)
                    alive = torch.ones(node.shape[0], dtype=torch.bool, device=device)
            with timer("forward"):
                batch.step(model, tok, keep_arg)
        generated += budget

        # Nodes that ran out of budget are expanded if a deeper level exists and tokens remain.
        can_expand = (not last) and generated < cfg.max_new_tokens
        levels.append(
            Level(
                parent=parent,
                child_index=child_index,
                tokens=tokens,
                logprobs=logprobs,
                entropies=entropies,
                lengths=lengths,
                finish=["stop" if s else "length" for s in stopped.tolist()],
                expanded=~stopped if can_expand else torch.zeros_like(stopped),
            )
        )
        if not can_expand or n_alive == 0:
            break
        # ---- feed the segments' last tokens: the children's first tokens come from these logits
        with timer("compact"):
            if n_alive != alive.shape[0]:
                node, tok = batch.select(alive.nonzero().squeeze(1), node, tok)
        with timer("forward"):
            batch.step(model, tok, keep_arg)
        row_parent = node.cpu()  # rows are in node order
        paths = [paths[i] for i in row_parent.tolist()]
    return levels


def _left_padded(seqs: list[list[int]], pad_id: int, dtype, neg):
    """``seqs`` left-padded into one batch: ``ids [N, W]``, each row's first column ``[N]``, position
    ids ``[N, W]``, the padding bias ``[N, 1, 1, W]`` (additive) and the causal prefill mask
    ``[N, 1, W, W]``."""
    lens = torch.tensor([len(x) for x in seqs], dtype=torch.long)
    width = int(lens.max())
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, x in enumerate(seqs):
        ids[i, width - len(x) :] = torch.tensor(x, dtype=torch.long)
    col = torch.arange(width)
    first = width - lens
    valid = col.unsqueeze(0) >= first.unsqueeze(1)  # [N, W] bool
    positions = (col.unsqueeze(0) - first.unsqueeze(1)).clamp_(min=0)  # [N, W]
    pad_bias = torch.zeros((len(seqs), 1, 1, width), dtype=dtype).masked_fill_(~valid[:, None, None], neg)
    causal = col.unsqueeze(0) <= col.unsqueeze(1)  # [W(query), W(key)]
    prefill_mask = pad_bias.expand(len(seqs), 1, width, width).masked_fill(~causal, neg)
    return ids, first, positions, pad_bias, prefill_mask


def _new_batch(cache, logits, bias, prompt_lens, cfg: DecodeConfig, width: int, device, cache_key: str) -> "_Batch":
    return _Batch(
        cache=cache,
        logits=logits,
        bias=bias.to(device),
        next_pos=prompt_lens.to(device),
        history=torch.zeros((len(prompt_lens), cfg.max_new_tokens), dtype=torch.long, device=device)
        if cfg.stop else None,
        cache_len=width,
        cache_key=cache_key,
    )


def _prefill(model, prompts, prompt_lens, cfg: DecodeConfig, dtype, neg, device, cache_key: str, keep_arg: dict,
             timer) -> "_Batch":
    """Every prompt encoded once, left-padded: the decoding state at the prompts' last tokens."""
    ids, _, positions, pad_bias, prefill_mask = _left_padded(prompts, cfg.pad_token_id, dtype, neg)
    width = ids.shape[1]
    capacity = width + cfg.max_new_tokens
    _check_sliding_window(model, capacity)
    bias = torch.zeros((len(prompts), 1, 1, capacity), dtype=dtype)  # [P, 1, 1, C] additive mask
    bias[:, :, :, :width] = pad_bias
    cache = PreallocatedCache(capacity) if cfg.kv_cache == "static" else _dynamic_cache(model)
    with timer("prefill"):
        out = model(input_ids=ids.to(device), attention_mask=prefill_mask.to(device),
                    position_ids=positions.to(device), use_cache=True, **{cache_key: cache}, **keep_arg)
    returned = output_cache(out)
    return _new_batch(returned if returned is not None else cache, out.logits[:, -1].float(), bias, prompt_lens,
                      cfg, width, device, cache_key)


def _prefill_shared(model, norm, prompts, prompt_lens, cfg: DecodeConfig, dtype, neg, device, cache_key: str,
                    keep_arg: dict) -> "_Batch":
    """``cfg.sources`` encoded once, left-padded; prompt ``i`` is given the cache row of its source
    with the columns past its own length masked out, its position ids continue at ``len(prompt)``
    and its first logits are the head at its last token (from the final norm's output). The keys
    and values of a token depend only on the tokens up to it, so this is the per-prompt prefill
    without re-encoding shared prefixes (up to float rounding)."""
    source_of = torch.tensor(cfg.source_of, dtype=torch.long)
    ids, first, positions, _, prefill_mask = _left_padded(cfg.sources, cfg.pad_token_id, dtype, neg)
    width = ids.shape[1]
    capacity = width + cfg.max_new_tokens
    _check_sliding_window(model, capacity)
    cache = PreallocatedCache(capacity) if cfg.kv_cache == "static" else _dynamic_cache(model)
    head = model.get_output_embeddings()
    seen = {}
    hook = norm.register_forward_hook(lambda mod, args, output: seen.__setitem__("hidden", output))
    try:
        out = model(input_ids=ids.to(device), attention_mask=prefill_mask.to(device),
                    position_ids=positions.to(device), use_cache=True, **{cache_key: cache}, **keep_arg)
    finally:
        hook.remove()
    last = first[source_of] + prompt_lens - 1  # [P] column of each prompt's last token
    # the head at each prompt's last token (the model itself ran it on the sources' last tokens only)
    logits = head(seen["hidden"][source_of.to(device), last.to(device)].unsqueeze(1))[:, -1].float()
    returned = output_cache(out)
    cache = returned if returned is not None else cache
    cache.batch_select_indices(source_of.to(device))  # one cache row per prompt (filled columns copied)
    col = torch.arange(width)
    own = (col.unsqueeze(0) >= first[source_of].unsqueeze(1)) & (col.unsqueeze(0) <= last.unsqueeze(1))  # [P, W]
    bias = torch.zeros((len(prompts), 1, 1, capacity), dtype=dtype)
    bias[:, 0, 0, :width].masked_fill_(~own, neg)
    return _new_batch(cache, logits, bias, prompt_lens, cfg, width, device, cache_key)

@dataclass
class _Batch:
    """The per-row decoding state (first dimension = batch row) and the KV cache.

    Attributes:
        cache: the model's KV cache, ``cache_len`` positions long.
        logits: ``[B, V]`` float32 next-token logits (None once sampled from).
        bias: ``[B, 1, 1, capacity]`` additive attention mask (padding columns = dtype minimum).
        next_pos: ``[B]`` position id of the next token fed.
        history: ``[B, max_new_tokens]`` response tokens so far (only with stop strings).
    """

    cache: object
    logits: torch.Tensor | None
    bias: torch.Tensor
    next_pos: torch.Tensor
    history: torch.Tensor | None
    cache_len: int
    cache_key: str = "cache"

    def select(self, idx: torch.Tensor, *extra: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Keep/repeat rows ``idx`` of the state (and of ``extra`` tensors, returned)."""
        self.cache.batch_select_indices(idx)
        if self.logits is not None:
            self.logits = self.logits.index_select(0, idx)
        self.bias, self.next_pos = self.bias.index_select(0, idx), self.next_pos.index_select(0, idx)
        if self.history is not None:
            self.history = self.history.index_select(0, idx)
        return tuple(x.index_select(0, idx) for x in extra)

    def fork(self, repeats: int) -> None:
        """Each row becomes ``repeats`` consecutive rows."""
        self.cache.batch_repeat_interleave(repeats)
        if self.logits is not None:
            self.logits = self.logits.repeat_interleave(repeats, dim=0)
        self.bias = self.bias.repeat_interleave(repeats, dim=0)
        self.next_pos = self.next_pos.repeat_interleave(repeats, dim=0)
        if self.history is not None:
            self.history = self.history.repeat_interleave(repeats, dim=0)

    def step(self, model, tok: torch.Tensor, keep_arg: dict) -> None:
        """Feed one token per row (``tok`` [B]) and update logits, positions and cache length."""
        self.logits = _step(model, {self.cache_key: self.cache}, tok, self.next_pos, self.bias[:, :, :, : self.cache_len + 1], keep_arg)
        self.next_pos = self.next_pos + 1
        self.cache_len += 1


def _step(model, cache: dict, tok: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, keep_arg: dict) -> torch.Tensor:
    """Feed one token per row (``cache``: ``{cache keyword: cache}``); return the next-token
    logits ``[B, V]`` float32 (fp32 computations with ``engine.model.precise_head``)."""
    out = model(
        input_ids=tok.unsqueeze(1),
        attention_mask=mask,
        position_ids=pos.unsqueeze(1),
        use_cache=True,
        **cache,
        **keep_arg,
    )
    return out.logits[:, -1].float()


def _dynamic_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)
