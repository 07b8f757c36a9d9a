"""SPO tree sampling (docs/algorithms.md §4.3): a tree of response segments per prompt.

The root is the prompt. It gets ``branching[0]`` children, each a segment of at most
``segment_len`` tokens; a child truncated at ``segment_len`` gets ``branching[1]`` children, and so
on; children at the last depth (``len(branching)``) run until EOS / a stop string / the response
cap ``max_new_tokens`` (counted from the root). A child that stops before its budget is a leaf.
SPO's "6-6-6, M = 30" is ``branching=[6, 6, 6], segment_len=30``.

Prefixes are never re-encoded: the loop (rollout/decode.py) forks a node's KV cache rows into its
children right after the node's last token has been fed, and samples all nodes of one depth as one
batch. Randomness is per node (``sampling.node_seed(base_seed, path)``), which is what lets
``independent_paths`` replay every root-to-leaf path as a separate sequence, token for token.

Tree values and advantages are computed by ``rltrain.algos.spo`` from ``parent`` and leaf rewards.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from rltrain.rollout.decode import DecodeConfig, Level, decode_tree
from rltrain.rollout.engine import SamplingParams
from rltrain.rollout.sampling import draw_base_seed, node_seed, segment_uniforms
from rltrain.rollout.stops import StopStrings


@dataclass
class TokenTree:
    """The sampled tree of one prompt. Node 0 is the root (the prompt); nodes are in BFS order
    (parents before children, siblings consecutive), so ``parent[i] < i`` for i > 0.

    Attributes:
        prompt_ids: the prompt's token ids.
        parent: per node, the index of its parent; -1 for the root.
        depth: per node, 0 for the root, d for a segment at depth d (tokens from (d-1)*M on).
        child_index: per node, its position among its parent's children (0 for the root).
        token_ids: per node, the tokens of its segment ([] for the root).
        logprobs: per node, ``[len(segment)]`` float32 log-probs under logits / T (T=1 if greedy).
        finish_reason: per node, "stop" (EOS / stop string: a leaf), "length" (its budget ran out:
            expanded if it is not at the last depth and the response cap is not reached, else a
            leaf), None for the root.
        is_leaf: per node, whether it has no children (the root never is).
    """

    prompt_ids: list[int]
    parent: list[int] = field(default_factory=lambda: [-1])
    depth: list[int] = field(default_factory=lambda: [0])
    child_index: list[int] = field(default_factory=lambda: [0])
    token_ids: list[list[int]] = field(default_factory=lambda: [[]])
    logprobs: list[torch.Tensor] = field(default_factory=lambda: [torch.zeros(0)])
    finish_reason: list[str | None] = field(default_factory=lambda: [None])
    is_leaf: list[bool] = field(default_factory=lambda: [False])

    def __len__(self) -> int:
        return len(self.parent)

    def children(self, node: int) -> list[int]:
        return [i for i, p in enumerate(self.parent) if p == node]

    def leaves(self) -> list[int]:
        return [i for i, leaf in enumerate(self.is_leaf) if leaf]

    def path(self, node: int) -> list[int]:
        """Node indices from the root's child down to ``node``."""
        out = []
        while node > 0:
            out.append(node)
            node = self.parent[node]
        return out[::-1]

    def response_ids(self, node: int) -> list[int]:
        """The response from the root to the end of ``node``'s segment."""
        return [t for i in self.path(node) for t in self.token_ids[i]]

    def response_logprobs(self, node: int) -> torch.Tensor:
        return torch.cat([self.logprobs[0]] + [self.logprobs[i] for i in self.path(node)])


def _decode_config(branching, segment_len, max_new_tokens, params, eos_token_ids, pad_token_id, tokenizer, base_seed):
    return DecodeConfig(
        branching=list(branching),
        segment_len=segment_len,
        max_new_tokens=max_new_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        eos_token_ids=list(eos_token_ids),
        pad_token_id=pad_token_id,
        stop=StopStrings(params.stop_strings, tokenizer),
        base_seed=base_seed,
    )


def _check(prompts, branching, segment_len, max_new_tokens):
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("sample_tree: prompts must be non-empty token lists")
    if not branching or any(b < 1 for b in branching):
        raise ValueError(f"sample_tree: branching must be a non-empty list of ints >= 1, got {branching}")
    if segment_len < 1 or max_new_tokens < 1:
        raise ValueError(f"sample_tree: segment_len ({segment_len}) and max_new_tokens ({max_new_tokens}) must be >= 1")


def sample_tree(
    model,
    prompts: list[list[int]],
    branching: list[int],
    segment_len: int,
    max_new_tokens: int,
    params: SamplingParams,
    *,
    eos_token_ids: list[int],
    pad_token_id: int,
    tokenizer=None,
    generator: torch.Generator | None = None,
    max_batch_rows: int = 512,
    first_prompt_index: int = 0,
    on_position: Callable[[int, int], None] | None = None,
) -> list[TokenTree]:
    """Sample one ``TokenTree`` per prompt (see the module docstring for the shape).

    Args:
        model, eos_token_ids, pad_token_id, tokenizer, generator: as in ``generate``.
        branching: children per expanded node at each depth, e.g. ``[6, 6, 6]``.
        segment_len: tokens per segment above the last depth (M).
        max_new_tokens: cap on a root-to-leaf response.
        params: temperature, top_p, top_k, stop_strings (its ``max_new_tokens`` and ``n`` are not
            used: ``max_new_tokens`` and ``branching`` set lengths and counts).
        max_batch_rows: bound on the sequences decoded together, which bounds the KV cache
            (rows × (prompt + max_new_tokens) positions): prompts are sampled in chunks of
            ``max(1, max_batch_rows // prod(branching))``. Chunking does not change the samples.
        first_prompt_index: position of ``prompts[0]`` in the caller's whole prompt list, as in
            ``generate``: a rank sampling its slice of a global batch gets the single-process trees.
        on_position: optional progress callback ``on_position(done, total)`` in decoded positions,
            ``total`` = chunks × ``max_new_tokens`` (a chunk may end early).
    """
    _check(prompts, branching, segment_len, max_new_tokens)
    cfg = _decode_config(branching, segment_len, max_new_tokens, params, eos_token_ids, pad_token_id,
                         tokenizer, draw_base_seed(generator))
    leaves_per_prompt = 1
    for b in branching:
        leaves_per_prompt *= b
    chunk = max(1, max_batch_rows // leaves_per_prompt)
    starts = range(0, len(prompts), chunk)
    total_positions = len(starts) * max_new_tokens
    trees: list[TokenTree] = []
    was_training = model.training
    model.eval()
    try:
        for k, start in enumerate(starts):
            part = prompts[start : start + chunk]
            chunk_cfg = cfg if on_position is None else replace(  # positions counted over all chunks
                cfg, on_position=lambda done, _, base=k * max_new_tokens: on_position(base + done, total_positions))
            with torch.inference_mode():
                levels = decode_tree(model, part, chunk_cfg, prompt_offset=first_prompt_index + start)
                levels = [_to_cpu(lv) for lv in levels]
            trees.extend(_build_trees(part, levels))
    finally:
        model.train(was_training)
    return trees


def _to_cpu(level: Level) -> Level:
    """Plain (non-inference) CPU copies."""
    return Level(
        parent=level.parent.cpu().clone(),
        child_index=level.child_index.cpu().clone(),
        tokens=level.tokens.cpu().clone(),
        logprobs=level.logprobs.cpu().clone(),
        entropies=level.entropies.cpu().clone(),
        lengths=level.lengths.cpu().clone(),
        finish=list(level.finish),
        expanded=level.expanded.cpu().clone(),
    )


def _build_trees(prompts: list[list[int]], levels: list[Level]) -> list[TokenTree]:
    trees = [TokenTree(prompt_ids=list(p)) for p in prompts]
    # For the previous level: (prompt index, node index in that prompt's tree) of each node.
    owner = [(i, 0) for i in range(len(prompts))]
    for depth, level in enumerate(levels, start=1):
        new_owner = []
        for k in range(level.parent.shape[0]):
            p_idx, parent_node = owner[int(level.parent[k])]
            tree = trees[p_idx]
            n = int(level.lengths[k])
            tree.parent.append(parent_node)
            tree.depth.append(depth)
            tree.child_index.append(int(level.child_index[k]))
            tree.token_ids.append(level.tokens[k, :n].tolist())
            tree.logprobs.append(level.logprobs[k, :n].clone())
            tree.finish_reason.append(level.finish[k])
            tree.is_leaf.append(not bool(level.expanded[k]))
            new_owner.append((p_idx, len(tree.parent) - 1))
        owner = new_owner
    return trees


def path_uniforms(base_seed: int, path: tuple[int, ...], segment_len: int, max_new_tokens: int) -> torch.Tensor:
    """The random stream a root-to-leaf path sees: its nodes' streams, one segment after another.

    Args:
        path: (prompt index, child index at depth 1, ..., child index at the last depth).

    Returns:
        ``[max_new_tokens]`` float64.
    """
    parts, used = [], 0
    depth_count = len(path) - 1
    for d in range(1, depth_count + 1):
        length = min(segment_len, max_new_tokens - used) if d < depth_count else max_new_tokens - used
        if length <= 0:
            break
        parts.append(segment_uniforms([node_seed(base_seed, path[: d + 1])], length)[0])
        used += length
    return torch.cat(parts)


def independent_paths(
    model,
    prompts: list[list[int]],
    branching: list[int],
    segment_len: int,
    max_new_tokens: int,
    params: SamplingParams,
    *,
    eos_token_ids: list[int],
    pad_token_id: int,
    tokenizer=None,
    generator: torch.Generator | None = None,
    paths: list[tuple[int, ...]] | None = None,
) -> list[list[int]]:
    """Sample root-to-leaf paths as independent sequences (no shared prefix, no tree).

    The reference ``sample_tree`` is checked against, and the baseline of the benchmark. With the
    same ``generator`` state, path ``(i, c1, ..., cD)`` reproduces the tree's response through
    those children (a path through a node that stopped early equals that node's response).

    Args:
        paths: the paths to sample, each (prompt index, child index per depth, padded with 0 below
            a leaf to full depth); default: every path of the full tree.

    Returns:
        The response token ids of each path, in the order of ``paths``.
    """
    _check(prompts, branching, segment_len, max_new_tokens)
    base_seed = draw_base_seed(generator)
    if paths is None:
        grid = torch.cartesian_prod(*[torch.arange(x) for x in [len(prompts)] + list(branching)])
        paths = [tuple(row) for row in grid.reshape(-1, len(branching) + 1).tolist()]
    table = torch.stack([path_uniforms(base_seed, p, segment_len, max_new_tokens) for p in paths])  # [N, T]
    cfg = _decode_config([1], max_new_tokens, max_new_tokens, params, eos_token_ids, pad_token_id, tokenizer,
                         base_seed)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            (level,) = decode_tree(model, [prompts[p[0]] for p in paths], cfg, first_uniforms=table)
            out = [level.tokens[k, : int(level.lengths[k])].tolist() for k in range(len(paths))]
    finally:
        model.train(was_training)
    return out


def leaf_paths(tree: TokenTree, prompt_index: int, depth_count: int) -> list[tuple[int, ...]]:
    """The ``independent_paths`` path of each leaf of ``tree`` (child indices, 0-padded)."""
    out = []
    for leaf in tree.leaves():
        idx = [tree.child_index[i] for i in tree.path(leaf)]
        out.append(tuple([prompt_index] + idx + [0] * (depth_count - len(idx))))
    return out
