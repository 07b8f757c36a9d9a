"""SPO tree sampling: same samples as independent root-to-leaf paths, node counts, no re-encoding."""
import torch

from rltrain.rollout import SamplingParams, generate
from rltrain.rollout.tree import independent_paths, leaf_paths, sample_tree

from .conftest import PAD


def _tree(model, prompts, branching, m, max_new, params, eos, seed=0, **kw):
    return sample_tree(model, prompts, branching, m, max_new, params, eos_token_ids=eos, pad_token_id=PAD,
                       generator=torch.Generator().manual_seed(seed), **kw)


def _check_structure(tree, branching, m, max_new):
    for i in range(1, len(tree)):
        p = tree.parent[i]
        assert 0 <= p < i and tree.depth[i] == tree.depth[p] + 1
        assert not tree.is_leaf[p]
        assert len(tree.token_ids[i]) == len(tree.logprobs[i])
        last = tree.depth[i] == len(branching)
        if not tree.is_leaf[i]:  # expanded: a full segment, above the last depth
            assert len(tree.token_ids[i]) == m and not last and tree.finish_reason[i] == "length"
            assert len(tree.children(i)) == branching[tree.depth[i]]
            assert [tree.child_index[c] for c in tree.children(i)] == list(range(branching[tree.depth[i]]))
        elif tree.finish_reason[i] == "length":  # truncated leaf: only at the last depth / the cap
            assert last or len(tree.response_ids(i)) == max_new
    assert len(tree.children(0)) == branching[0]


def test_tree_equals_independent_paths(tiny_model, prompts):
    """Token for token: each leaf's response equals its path sampled as a separate sequence (which
    re-encodes every prefix), and the distinct independent paths are exactly the tree's leaves."""
    branching, m, max_new = [2, 3, 2], 3, 12
    params = SamplingParams(max_new_tokens=max_new, temperature=1.0)
    eos = list(range(20, 40))  # ~15% of the vocabulary: some segments stop early
    trees = _tree(tiny_model, prompts[:2], branching, m, max_new, params, eos, seed=1)
    indep = independent_paths(tiny_model, prompts[:2], branching, m, max_new, params, eos_token_ids=eos,
                              pad_token_id=PAD, generator=torch.Generator().manual_seed(1))
    grid = torch.cartesian_prod(*[torch.arange(x) for x in [2] + branching]).tolist()
    early = 0
    for p_idx, tree in enumerate(trees):
        _check_structure(tree, branching, m, max_new)
        leaves = {tuple(tree.response_ids(leaf)) for leaf in tree.leaves()}
        mine = {tuple(indep[k]) for k, path in enumerate(grid) if path[0] == p_idx}
        assert leaves == mine
        for leaf, path in zip(tree.leaves(), leaf_paths(tree, p_idx, len(branching))):
            assert tree.response_ids(leaf) == indep[grid.index(list(path))]
            early += tree.depth[leaf] < len(branching)
    assert early > 0  # the case where a node stops before its segment ends was exercised
    assert any(t.depth[-1] == 3 for t in trees)  # and full depth was reached


def test_tree_logprobs_equal_fresh_forward(tiny_model, prompts):
    params = SamplingParams(max_new_tokens=9, temperature=0.8, top_p=0.95)
    (tree,) = _tree(tiny_model, prompts[2:], [2, 2], 4, 9, params, [], seed=2)
    for leaf in tree.leaves():
        resp = tree.response_ids(leaf)
        seq = torch.tensor(tree.prompt_ids + resp).unsqueeze(0)
        with torch.no_grad():
            logits = tiny_model(seq).logits[0, len(tree.prompt_ids) - 1 : -1] / 0.8
        ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(resp).unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(tree.response_logprobs(leaf), ref, atol=1e-4, rtol=0)


def test_node_counts_full_tree(tiny_model, prompts):
    (tree,) = _tree(tiny_model, prompts[:1], [2, 3, 2], 3, 10, SamplingParams(max_new_tokens=10), [], seed=3)
    assert len(tree) == 1 + 2 + 6 + 12
    assert [tree.depth.count(d) for d in range(4)] == [1, 2, 6, 12]
    assert len(tree.leaves()) == 12 and all(tree.depth[i] == 3 for i in tree.leaves())
    assert [len(tree.token_ids[i]) for i in range(1, len(tree))] == [3] * 8 + [4] * 12
    assert all(len(tree.response_ids(i)) == 10 and tree.finish_reason[i] == "length" for i in tree.leaves())
    _check_structure(tree, [2, 3, 2], 3, 10)


def test_node_counts_deterministic_model_with_early_stop(tiny_model, prompts):
    """Greedy decoding makes every branch identical: with the greedy token at position 4 declared
    EOS, depth-1 nodes (positions 0-2) are expanded and every depth-2 node stops at its 2nd token."""
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    greedy = generate(tiny_model, prompts[:1], params, eos_token_ids=[], pad_token_id=PAD).response_ids[0].tolist()
    k = next(t for t in range(3, 12) if greedy[t] not in greedy[:t])
    (tree,) = _tree(tiny_model, prompts[:1], [2, 2, 3], 3, 12, params, [greedy[k]])
    _check_structure(tree, [2, 2, 3], 3, 12)
    stop_depth = k // 3 + 1  # the depth whose segment holds position k
    expected = [1, 2, 4, 8][: stop_depth + 1]
    assert [tree.depth.count(d) for d in range(4)] == expected + [0] * (4 - len(expected))
    assert len(tree) == sum(expected)
    for leaf in tree.leaves():
        assert tree.depth[leaf] == stop_depth and tree.finish_reason[leaf] == "stop"
        assert tree.response_ids(leaf) == greedy[: k + 1]


def test_one_level_tree_equals_generate(tiny_model, prompts):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, n=3)
    r = generate(tiny_model, prompts, params, eos_token_ids=list(range(20, 30)), pad_token_id=PAD,
                 generator=torch.Generator().manual_seed(4))
    trees = _tree(tiny_model, prompts, [3], 8, 8, params, list(range(20, 30)), seed=4)
    rows = [t.response_ids(leaf) for t in trees for leaf in t.leaves()]
    assert rows == [r.response_ids[i, : int(r.lengths[i])].tolist() for i in range(9)]


def test_prefix_encoded_once(tiny_model, prompts):
    """One forward encodes the prompt; after that each sampled token is fed exactly once (a leaf's
    last token never): the shared prefixes are not re-encoded for the children."""
    fed = []
    hook = tiny_model.model.embed_tokens.register_forward_hook(lambda mod, args, out: fed.append(args[0].shape))
    try:
        (tree,) = _tree(tiny_model, prompts[:1], [2, 3], 4, 10, SamplingParams(max_new_tokens=10), [], seed=5)
    finally:
        hook.remove()
    calls = [s for s in fed if s[1] > 1]
    assert calls == [torch.Size([1, len(prompts[0])])]
    distinct = sum(len(t) for t in tree.token_ids)
    assert distinct == 2 * 4 + 6 * 6
    assert sum(s[0] for s in fed if s[1] == 1) == distinct - len(tree.leaves())


def test_response_cap_reached_above_last_depth(tiny_model, prompts):
    """max_new_tokens = 6 with segments of 3: depth-2 nodes hit the cap and are "length" leaves;
    depth 3 is never reached."""
    (tree,) = _tree(tiny_model, prompts[:1], [2, 2, 2], 3, 6, SamplingParams(max_new_tokens=6), [], seed=6)
    assert [tree.depth.count(d) for d in range(4)] == [1, 2, 4, 0]
    assert all(tree.depth[i] == 2 and tree.finish_reason[i] == "length" for i in tree.leaves())
    assert all(len(tree.response_ids(i)) == 6 for i in tree.leaves())


def test_prompt_chunks_give_the_same_trees(tiny_model, prompts):
    params = SamplingParams(max_new_tokens=8, temperature=1.0)
    whole = _tree(tiny_model, prompts, [2, 2], 3, 8, params, list(range(20, 30)), seed=7)
    chunked = _tree(tiny_model, prompts, [2, 2], 3, 8, params, list(range(20, 30)), seed=7, max_batch_rows=4)
    assert [t.token_ids for t in whole] == [t.token_ids for t in chunked]
    assert [t.parent for t in whole] == [t.parent for t in chunked]


def test_first_prompt_index_places_a_slice_in_the_whole_batch(tiny_model, prompts):
    params = SamplingParams(max_new_tokens=8, temperature=1.0)
    whole = _tree(tiny_model, prompts, [2, 2], 3, 8, params, [], seed=7)
    tail = _tree(tiny_model, prompts[1:], [2, 2], 3, 8, params, [], seed=7, first_prompt_index=1, max_batch_rows=4)
    assert [t.token_ids for t in tail] == [t.token_ids for t in whole[1:]]
    unshifted = _tree(tiny_model, prompts[1:], [2, 2], 3, 8, params, [], seed=7)
    assert [t.token_ids for t in unshifted] != [t.token_ids for t in whole[1:]]


def test_progress_callback_counts_positions_without_changing_the_trees(tiny_model, prompts):
    """on_position reports every decoded position, increasing, across prompt chunks; the trees are
    the ones sampled without it (progress display for SPO-tree's rollout)."""
    params = SamplingParams(max_new_tokens=8, temperature=1.0)
    calls = []
    seen = _tree(tiny_model, prompts, [2, 2], 3, 8, params, [], seed=7, max_batch_rows=4,
                 on_position=lambda done, total: calls.append((done, total)))
    plain = _tree(tiny_model, prompts, [2, 2], 3, 8, params, [], seed=7, max_batch_rows=4)
    assert [t.token_ids for t in seen] == [t.token_ids for t in plain]
    chunks = len(prompts)  # 4 rows per chunk, 4 leaves per prompt: one prompt per chunk
    assert {total for _, total in calls} == {chunks * 8}
    # no EOS: every chunk decodes all 8 positions, so the count runs 1..total without a gap
    assert [done for done, _ in calls] == list(range(1, chunks * 8 + 1))
