"""Segment Policy Optimization: partitions, chain advantages, tree values (docs/algorithms.md §4).

Paper: Guo et al. 2025, "Segment Policy Optimization: Effective Segment-Level Credit Assignment
in RL for Large Language Models" (arXiv 2505.23564); behaviour as in AIFrameResearch/SPO
(treetune): ``math_episode_generator_with_mc_advantages.py`` (chain),
``tree_episode_generator.py::extract_edges_from_tree`` (tree).

Positions. Responses are right-padded: the valid tokens of row i are columns 0..L_i−1. A *cut
position* c ∈ {−1, …, L_i − 2} names the state "prompt + response[0..c]"; c = −1 is the prompt.
With cut positions c_0 < c_1 < … and MC values V(c_j) (mean reward of K continuations sampled
from that state), a chain has segments (c_{j−1}, c_j] plus a last segment (c_last, L_i−1] that
ends at the final reward r, and a first segment [0, c_0] when c_0 ≥ 0.

SPO-chain advantages (``chain_advantages``): every token of segment (c_{j−1}, c_j] gets
V(c_j) − V(c_{j−1}); the last segment gets r − V(c_last); the first segment [0, c_0] gets
    first_segment_value="group_mean" (decision 2 in docs/algorithms.md, default): V(c_0) − V(prompt), V(prompt) given
        as ``prompt_values`` (the mean reward of the prompt's own sampled responses,
        ``grpo.group_means``);
    first_segment_value="zero": 0, as the official code does (unless c_0 = −1, in which case
        there is no first segment and V(−1) is the MC value of the prompt).
With no cut positions the whole response is one segment: r − V(prompt) ("group_mean") or 0
("zero", official). The probability mask (zero advantage where p > 0.9) is a separate step:
``select.prob_mask``.

Cut positions (``cutpoint_partition``, §4.1): positions t with p_t < threshold (0.9, hard-coded
in the official code) give candidates c = t − 1 (each segment *starts* with a low-probability
token); every ``interval``-th candidate is kept, the first always (``cands[::interval]``, "int5");
no cap on the number of segments. p_t comes from the current actor at the sampling temperature.
``fixed_count_partition`` is the "naive" ablation: near-equal contiguous chunks, the remainder on
the first chunks.

SPO-tree (§4.3): a forest given as arrays (the sampler builds them):
    parent:      ``[M]`` parent node index, −1 for a root (one root per prompt);
    leaf_reward: ``[M]`` float, the verifier reward of leaves, NaN for internal nodes.
Node ids are arbitrary (no order needed). ``tree_values`` aggregates bottom-up: V(leaf) =
reward, V(node) = mean of its children's V, std = population std of the children's V
(``np.std``; [UNCONFIRMED] ddof). Each edge parent→child is identified by its child;
``tree_edge_advantages`` gives V(child) − V(parent) ("rloo" in the official code — not
leave-one-out: the parent mean includes the child) or, "grpo", that divided by
(std of the parent's children + 1e-8). ``tree_keep_edges`` keeps edges with advantage ≠ 0
(negative ones included, despite the official ``only_adv_greater_than_zero`` name).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rltrain.algos.core import _bool

FIRST_SEGMENT_VALUES = ("group_mean", "zero")
TREE_VARIANTS = ("rloo", "grpo")


def _lengths(mask: Tensor) -> list[int]:
    """Row lengths of a right-padded mask; raises if a row's valid tokens are not a prefix."""
    m = _bool(mask)
    lengths = m.sum(-1)  # [B]
    prefix = torch.arange(m.shape[-1], device=m.device)[None, :] < lengths[:, None]  # [B, T]
    if not torch.equal(prefix, m):
        raise ValueError("SPO expects right-padded responses: each row's valid tokens must be a prefix")
    return [int(x) for x in lengths.tolist()]


# --------------------------------------------------------------------------------------------
# Partitions
# --------------------------------------------------------------------------------------------
def cutpoint_partition(logp: Tensor, mask: Tensor, *, threshold: float = 0.9, interval: int = 5) -> list[list[int]]:
    """SPO-chain cut positions from token probabilities.

    Args:
        logp: ``[B, T]`` log-probs of the sampled tokens (current actor, sampling temperature).
        mask: ``[B, T]`` right-padded valid response tokens.
        threshold: p_t < threshold marks a low-probability token (0.9).
        interval: keep every ``interval``-th candidate, starting with the first (5 = "int5").

    Returns:
        Per row, the increasing cut positions (−1 = the prompt).
    """
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    lengths = _lengths(mask)
    low = torch.exp(logp.detach()) < threshold  # [B, T]
    cuts: list[list[int]] = []
    for i, n in enumerate(lengths):
        cands = (torch.nonzero(low[i, :n]).squeeze(-1) - 1).tolist()  # c = t − 1
        cuts.append(cands[::interval])
    return cuts


def fixed_count_partition(lengths: Sequence[int] | Tensor, *, num_segments: int = 4) -> list[list[int]]:
    """"Naive" SPO-chain partition: ``num_segments`` contiguous near-equal chunks per response.

    Chunk sizes are ⌊L/n⌋, with the remainder L mod n spread one token each over the first
    chunks; the cut positions are the last index of every chunk but the final one. Empty chunks
    (L < n) are dropped. Example: L = 10, n = 4 → sizes 3, 3, 2, 2 → cuts [2, 5, 7].

    Returns:
        Per response, the increasing cut positions (never −1).
    """
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    out: list[list[int]] = []
    for length in (lengths.tolist() if isinstance(lengths, Tensor) else lengths):
        length = int(length)
        q, r = divmod(length, num_segments)
        sizes = [q + 1 if j < r else q for j in range(num_segments)]
        ends, pos = [], -1
        for size in sizes[:-1]:
            if size > 0:
                pos += size
                ends.append(pos)
        out.append([e for e in ends if e <= length - 2])
    return out


# --------------------------------------------------------------------------------------------
# Chain advantages
# --------------------------------------------------------------------------------------------
def chain_advantages(
    cut_positions: Sequence[Sequence[int]],
    cut_values: Sequence[Sequence[float]] | Sequence[Tensor],
    scores: Tensor,
    mask: Tensor,
    *,
    first_segment_value: str = "group_mean",
    prompt_values: Tensor | None = None,
) -> Tensor:
    """Segment advantages of SPO-chain, broadcast to tokens (see the module docstring).

    Args:
        cut_positions: per row, increasing cut positions in [−1, L_i − 2].
        cut_values: per row, V(c_j) for each cut position (same lengths).
        scores: ``[B]`` final rewards r.
        mask: ``[B, T]`` right-padded valid response tokens.
        first_segment_value: ``"group_mean"`` or ``"zero"``.
        prompt_values: ``[B]`` V(prompt) per row, required for ``"group_mean"`` (ignored for
            ``"zero"``).

    Returns:
        ``[B, T]`` detached advantages (float32, or float64 for float64 scores), 0 on padding.
    """
    if first_segment_value not in FIRST_SEGMENT_VALUES:
        raise ValueError(
            f"unknown first_segment_value {first_segment_value!r}; valid: {', '.join(FIRST_SEGMENT_VALUES)}"
        )
    if first_segment_value == "group_mean" and prompt_values is None:
        raise ValueError("first_segment_value='group_mean' needs prompt_values (V(prompt) per row)")
    lengths = _lengths(mask)
    B, T = mask.shape
    if not (len(cut_positions) == len(cut_values) == B == scores.shape[0]):
        raise ValueError("cut_positions, cut_values, scores and mask must have one entry per row")
    dtype = torch.promote_types(scores.dtype, torch.float32)
    adv = torch.zeros(B, T, dtype=dtype)  # [B, T], filled on the CPU then moved
    score_list = scores.detach().to(torch.float64).cpu().tolist()
    prompt_list = None if prompt_values is None else prompt_values.detach().to(torch.float64).cpu().tolist()
    for i in range(B):
        cuts = [int(c) for c in cut_positions[i]]
        vals = [float(v) for v in cut_values[i]]
        n = lengths[i]
        if len(cuts) != len(vals):
            raise ValueError(f"row {i}: {len(cuts)} cut positions but {len(vals)} values")
        if any(b <= a for a, b in zip(cuts, cuts[1:])) or (cuts and (cuts[0] < -1 or cuts[-1] > n - 2)):
            raise ValueError(f"row {i}: cut positions {cuts} must increase within [-1, {n - 2}]")
        if n == 0:
            continue
        points = list(zip(cuts, vals)) + [(n - 1, score_list[i])]
        if points[0][0] == -1:
            prev_pos, prev_val = points.pop(0)
        else:
            prev_pos = -1
            prev_val = prompt_list[i] if first_segment_value == "group_mean" else None
        for pos, val in points:
            adv[i, prev_pos + 1 : pos + 1] = 0.0 if prev_val is None else val - prev_val
            prev_pos, prev_val = pos, val
    return adv.to(mask.device)


# --------------------------------------------------------------------------------------------
# Trees
# --------------------------------------------------------------------------------------------
def _children(parent: Sequence[int] | Tensor) -> tuple[list[int], list[list[int]], list[int]]:
    """(parent list, children lists, breadth-first order); validates the forest."""
    par = [int(p) for p in (parent.tolist() if isinstance(parent, Tensor) else parent)]
    M = len(par)
    children: list[list[int]] = [[] for _ in range(M)]
    roots = []
    for node, p in enumerate(par):
        if p == -1:
            roots.append(node)
        elif 0 <= p < M and p != node:
            children[p].append(node)
        else:
            raise ValueError(f"tree: node {node} has invalid parent {p}")
    order, head = list(roots), 0
    while head < len(order):
        order.extend(children[order[head]])
        head += 1
    if len(order) != M:
        raise ValueError("tree: parent array has a cycle (some nodes are not reachable from a root)")
    return par, children, order


def tree_values(parent: Sequence[int] | Tensor, leaf_reward: Tensor) -> tuple[Tensor, Tensor]:
    """Bottom-up node values of a forest.

    Args:
        parent: ``[M]`` parent index per node, −1 for roots.
        leaf_reward: ``[M]`` reward of each leaf, NaN for internal nodes.

    Returns:
        ``(values [M], stds [M])``: V(leaf) = reward and std 0; V(node) = mean of its children's
        values and std = their population std. Float64. Children that all have the same value give
        their parent exactly that value (a float mean of equal values can be 1 ulp off, which would
        leave their edges a nonzero advantage and keep them for training).
    """
    par, children, order = _children(parent)
    rewards = leaf_reward.detach().to(torch.float64).cpu()
    if rewards.shape != (len(par),):
        raise ValueError(f"leaf_reward must have shape ({len(par)},), got {tuple(leaf_reward.shape)}")
    values = torch.zeros(len(par), dtype=torch.float64)
    stds = torch.zeros(len(par), dtype=torch.float64)
    for node in reversed(order):  # children before parents
        kids = children[node]
        is_nan = bool(torch.isnan(rewards[node]))
        if not kids:
            if is_nan:
                raise ValueError(f"tree: leaf {node} has no reward (NaN)")
            values[node] = rewards[node]
            continue
        if not is_nan:
            raise ValueError(f"tree: internal node {node} has a reward; use NaN for internal nodes")
        kid_values = values[kids]
        if bool((kid_values == kid_values[0]).all()):  # zero spread: exact, so its edges get exactly 0
            values[node] = kid_values[0]
            continue
        values[node] = kid_values.mean()
        stds[node] = kid_values.std(correction=0)
    return values, stds


def tree_edge_advantages(
    parent: Sequence[int] | Tensor,
    values: Tensor,
    stds: Tensor,
    *,
    variant: str = "rloo",
    eps: float = 1e-8,
) -> Tensor:
    """Advantage of each edge parent→child, indexed by the child: ``[M]``, NaN for roots.

    "rloo": V(child) − V(parent);  "grpo": (V(child) − V(parent)) / (std(parent's children) + eps).
    """
    if variant not in TREE_VARIANTS:
        raise ValueError(f"unknown tree variant {variant!r}; valid: {', '.join(TREE_VARIANTS)}")
    par = torch.as_tensor([int(p) for p in (parent.tolist() if isinstance(parent, Tensor) else parent)])
    is_root = par < 0  # [M]
    safe = torch.where(is_root, torch.zeros_like(par), par)
    adv = values - values[safe]  # [M]
    if variant == "grpo":
        adv = adv / (stds[safe] + eps)
    return torch.where(is_root, torch.full_like(adv, float("nan")), adv)


def tree_keep_edges(edge_advantages: Tensor) -> Tensor:
    """Edges used for training: bool ``[M]``, True where the advantage is finite and ≠ 0."""
    return torch.isfinite(edge_advantages) & (edge_advantages != 0)


def tree_training_edges(
    parent: Sequence[int] | Tensor, leaf_reward: Tensor, *, variant: str = "rloo", eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """``(child_nodes [E], advantages [E])`` of the kept edges, in node order: one training
    sample per edge (query = the parent's full text, response = the child's segment)."""
    values, stds = tree_values(parent, leaf_reward)
    adv = tree_edge_advantages(parent, values, stds, variant=variant, eps=eps)
    keep = tree_keep_edges(adv)
    return torch.nonzero(keep).squeeze(-1), adv[keep]
