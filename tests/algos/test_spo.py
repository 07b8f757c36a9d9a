"""rltrain.algos.spo: partitions, chain advantages and tree values on worked examples."""
from __future__ import annotations

import math

import pytest
import torch

from rltrain.algos.spo import (
    chain_advantages,
    cutpoint_partition,
    fixed_count_partition,
    tree_edge_advantages,
    tree_keep_edges,
    tree_training_edges,
    tree_values,
)

from .conftest import right_padded_mask

P = torch.tensor(
    [
        [0.5, 0.95, 0.3, 0.99, 0.8, 0.2, 0.97, 0.1],
        [0.95, 0.5, 0.99, 0.4, 0.05, 0.05, 0.05, 0.05],  # last 4 are padding
    ]
)
PMASK = right_padded_mask([8, 4], 8)


def test_cutpoint_partition_hand():
    """Row 0: p < 0.9 at t = 0, 2, 4, 5, 7 → candidates c = t − 1 = −1, 1, 3, 4, 6.
    interval 1 keeps all; 2 keeps [−1, 3, 6]; 5 keeps [−1]. Row 1 (length 4): t = 1, 3 → c = 0, 2;
    interval 2 → [0]. Padding (p = 0.05) is never a candidate. Threshold 0.4: row 0 t = 2, 5, 7
    → [1, 4, 6]; row 1 none (0.4 is not < 0.4)."""
    lp = P.log()
    assert cutpoint_partition(lp, PMASK, interval=1) == [[-1, 1, 3, 4, 6], [0, 2]]
    assert cutpoint_partition(lp, PMASK, interval=2) == [[-1, 3, 6], [0]]
    assert cutpoint_partition(lp, PMASK, interval=5) == [[-1], [0]]
    assert cutpoint_partition(lp, PMASK, threshold=0.4, interval=1) == [[1, 4, 6], []]


def test_fixed_count_partition_hand():
    """4 chunks: L = 10 → sizes 3, 3, 2, 2 → cuts [2, 5, 7]; L = 8 → 2, 2, 2, 2 → [1, 3, 5];
    L = 5 → 2, 1, 1, 1 → [1, 2, 3]; L = 2 → chunks [0], [1] → [0]; L = 1 and 0 → []."""
    assert fixed_count_partition([10, 8, 5, 2, 1, 0]) == [[2, 5, 7], [1, 3, 5], [1, 2, 3], [0], [], []]
    assert fixed_count_partition(torch.tensor([9]), num_segments=2) == [[4]]


def test_chain_advantages_hand():
    """Row 0: L = 8, cuts [1, 4], V = [0.4, 0.8], r = 1, V(prompt) = 0.5.
      group_mean: tokens 0–1: 0.4 − 0.5 = −0.1; tokens 2–4: 0.8 − 0.4 = 0.4; tokens 5–7: 1 − 0.8 = 0.2.
      zero (official): tokens 0–1 get 0, the rest as above.
    Row 1: L = 6, cuts [−1, 3], V = [0.6, 0.2], r = 0: tokens 0–3: 0.2 − 0.6 = −0.4; tokens 4–5:
      0 − 0.2 = −0.2, in both modes (V(−1) is the MC value of the prompt).
    Row 2: L = 3, no cuts, r = 1, V(prompt) = 0.25: group_mean 0.75 everywhere; zero: 0."""
    mask = right_padded_mask([8, 6, 3], 8)
    cuts = [[1, 4], [-1, 3], []]
    vals = [[0.4, 0.8], [0.6, 0.2], []]
    scores = torch.tensor([1.0, 0.0, 1.0])
    prompt = torch.tensor([0.5, 0.9, 0.25])
    gm = chain_advantages(cuts, vals, scores, mask, first_segment_value="group_mean", prompt_values=prompt)
    zero = chain_advantages(cuts, vals, scores, mask, first_segment_value="zero")
    row0 = [-0.1, -0.1, 0.4, 0.4, 0.4, 0.2, 0.2, 0.2]
    row1 = [-0.4] * 4 + [-0.2] * 2 + [0.0] * 2
    assert torch.allclose(gm, torch.tensor([row0, row1, [0.75] * 3 + [0.0] * 5]))
    assert torch.allclose(zero, torch.tensor([[0.0, 0.0] + row0[2:], row1, [0.0] * 8]))


def test_chain_advantages_from_cutpoint_partition():
    """End to end on row 0 of P with interval 2: cuts [−1, 3, 6], V = [0.5, 0.7, 0.9], r = 0:
    tokens 0–3: 0.2, tokens 4–6: 0.2, token 7: −0.9."""
    cuts = cutpoint_partition(P[:1].log(), PMASK[:1], interval=2)
    adv = chain_advantages(cuts, [[0.5, 0.7, 0.9]], torch.tensor([0.0]), PMASK[:1], first_segment_value="zero")
    assert torch.allclose(adv, torch.tensor([[0.2] * 7 + [-0.9]]))


def test_chain_advantages_validation():
    mask = right_padded_mask([4], 4)
    with pytest.raises(ValueError, match="increase"):
        chain_advantages([[2, 1]], [[0.1, 0.2]], torch.tensor([1.0]), mask, first_segment_value="zero")
    with pytest.raises(ValueError, match="increase"):
        chain_advantages([[3]], [[0.1]], torch.tensor([1.0]), mask, first_segment_value="zero")  # > L − 2
    with pytest.raises(ValueError, match="prompt_values"):
        chain_advantages([[1]], [[0.1]], torch.tensor([1.0]), mask)
    with pytest.raises(ValueError, match="right-padded"):
        chain_advantages([[]], [[]], torch.tensor([1.0]), torch.tensor([[True, False, True, False]]),
                         first_segment_value="zero")
    with pytest.raises(ValueError, match="group_mean, zero"):
        chain_advantages([[]], [[]], torch.tensor([1.0]), mask, first_segment_value="mean")


# Forest: root 0 → {1, 2}; 1 → leaves {3: 1.0, 4: 0.0}; 2 is a leaf (1.0).
#         root 5 → leaves {6: 0.0, 7: 0.0}.
PARENT = [-1, 0, 0, 1, 1, -1, 5, 5]
NAN = math.nan
LEAF = torch.tensor([NAN, NAN, 1.0, 1.0, 0.0, NAN, 0.0, 0.0])


def test_tree_values_hand():
    """V(1) = mean(1, 0) = 0.5, std 0.5; V(2) = 1; V(0) = mean(0.5, 1) = 0.75, std 0.25;
    V(5) = 0, std 0. Leaves keep their reward, std 0."""
    values, stds = tree_values(PARENT, LEAF)
    assert torch.allclose(values, torch.tensor([0.75, 0.5, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(stds, torch.tensor([0.25, 0.5, 0, 0, 0, 0, 0, 0], dtype=torch.float64))


def test_tree_edge_advantages_hand():
    """rloo: V(child) − V(parent): 1: 0.5 − 0.75 = −0.25; 2: 0.25; 3: 0.5; 4: −0.5; 6, 7: 0.
    grpo: divided by std(parent's children) + 1e-8: 1: −0.25/0.25 = −1; 2: 1; 3: 1; 4: −1; 6, 7: 0.
    Roots have no edge (NaN). Kept edges: advantage ≠ 0 (negative ones too): 1, 2, 3, 4."""
    values, stds = tree_values(PARENT, LEAF)
    rloo = tree_edge_advantages(PARENT, values, stds)
    assert torch.isnan(rloo[[0, 5]]).all()
    assert torch.allclose(rloo[[1, 2, 3, 4, 6, 7]], torch.tensor([-0.25, 0.25, 0.5, -0.5, 0, 0], dtype=torch.float64))
    grpo = tree_edge_advantages(PARENT, values, stds, variant="grpo")
    assert torch.allclose(grpo[[1, 2, 3, 4, 6, 7]], torch.tensor([-1.0, 1, 1, -1, 0, 0], dtype=torch.float64), atol=1e-6)
    assert tree_keep_edges(rloo).tolist() == [False, True, True, True, True, False, False, False]
    children, adv = tree_training_edges(PARENT, LEAF)
    assert children.tolist() == [1, 2, 3, 4]
    assert torch.allclose(adv, torch.tensor([-0.25, 0.25, 0.5, -0.5], dtype=torch.float64))


def test_tree_node_ids_are_arbitrary():
    """Relabelling the nodes (children listed before parents) permutes the results accordingly."""
    perm = [7, 3, 5, 0, 1, 6, 2, 4]  # new id of old node i
    parent = [0] * 8
    leaf = torch.empty(8)
    for old, new in enumerate(perm):
        parent[new] = -1 if PARENT[old] == -1 else perm[PARENT[old]]
        leaf[new] = LEAF[old]
    values, stds = tree_values(parent, leaf)
    ref_values, ref_stds = tree_values(PARENT, LEAF)
    assert torch.allclose(values[perm], ref_values) and torch.allclose(stds[perm], ref_stds)


def test_tree_validation():
    with pytest.raises(ValueError, match="cycle"):
        tree_values([1, 0], torch.tensor([NAN, NAN]))
    with pytest.raises(ValueError, match="leaf 1"):
        tree_values([-1, 0], torch.tensor([NAN, NAN]))
    with pytest.raises(ValueError, match="internal node 0"):
        tree_values([-1, 0], torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="invalid parent"):
        tree_values([-1, 5], torch.tensor([NAN, 1.0]))
