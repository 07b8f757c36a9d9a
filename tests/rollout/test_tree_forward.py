"""tree_response_logprobs: SPO-tree edges computed on their parents' KV cache give the same
log-probs, entropies and gradients as the plain per-context forward (response_logprobs), while
the tokens through the model drop to about the trees' unique tokens."""
import torch

from rltrain.rollout.forward import response_logprobs
from rltrain.rollout.tree_forward import plan_levels, tree_response_logprobs

from .conftest import BOS, PAD


def _edges(branching=(3, 2), seg=(4, 5), seed=0):
    """Edges of two trees, like SPO-tree's (context = parent's full text, response = the segment),
    with segments of different lengths so that rows are right-padded; shuffled."""
    g = torch.Generator().manual_seed(seed)
    roots = [[BOS, 40, 41, 42], [BOS, 50, 51, 52, 53, 54, 55]]
    edges = []
    for root in roots:
        for _ in range(branching[0]):
            s1 = torch.randint(3, 90, (int(torch.randint(1, seg[0] + 1, (1,), generator=g)),), generator=g).tolist()
            edges.append((root, s1))
            for _ in range(branching[1]):
                s2 = torch.randint(3, 90, (int(torch.randint(1, seg[1] + 1, (1,), generator=g)),), generator=g).tolist()
                edges.append((root + s1, s2))
    perm = torch.randperm(len(edges), generator=g).tolist()
    edges = [edges[i] for i in perm]
    T = max(len(r) for _, r in edges)
    resp = torch.tensor([r + [PAD] * (T - len(r)) for _, r in edges])
    lengths = torch.tensor([len(r) for _, r in edges])
    return [c for c, _ in edges], resp, lengths, roots


def _loss(lp, lengths):
    mask = torch.arange(lp.shape[1])[None] < lengths[:, None]
    w = torch.linspace(-1, 1, lp.numel()).view_as(lp)  # distinct weight per token
    return (lp * w * mask).sum()


def test_levels_follow_parents():
    ctx, resp, lengths, _ = _edges()
    parent, level = plan_levels(ctx, resp, lengths, levels=2)
    for i, (p, lv) in enumerate(zip(parent, level)):
        if p >= 0:
            assert ctx[i] == ctx[p] + resp[p, : int(lengths[p])].tolist() and lv == 1
        else:
            assert lv == 0 and len(ctx[i]) in (4, 7)  # the roots' edges
    assert sum(level) == 12  # every depth-2 edge found its parent
    assert plan_levels(ctx, resp, lengths, levels=1)[0] == [-1] * len(ctx)


def test_same_logprobs_entropies_and_gradients_with_fewer_tokens(tiny_model):
    ctx, resp, lengths, roots = _edges()
    mask = torch.arange(resp.shape[1])[None] < lengths[:, None]
    params = [p for p in tiny_model.parameters() if p.requires_grad]

    tiny_model.zero_grad()
    lp0, ent0 = response_logprobs(tiny_model, ctx, resp, pad_id=PAD, temperature=0.7, with_entropy=True)
    (_loss(lp0, lengths) + (ent0 * mask).sum()).backward()
    g0 = [p.grad.clone() for p in params]

    tiny_model.zero_grad()
    stats = {}
    lp1, ent1 = tree_response_logprobs(tiny_model, ctx, resp, lengths, pad_id=PAD, temperature=0.7, levels=2,
                                       with_entropy=True, stats=stats)
    (_loss(lp1, lengths) + (ent1 * mask).sum()).backward()
    g1 = [p.grad.clone() for p in params]

    torch.testing.assert_close(lp1[mask], lp0[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent1[mask], ent0[mask], atol=1e-5, rtol=1e-5)
    for a, b in zip(g1, g0):  # float32 sums in another order: within 1e-4 of the tensor's largest entry
        assert (a - b).abs().max() <= 1e-4 * b.abs().max(), ((a - b).abs().max(), b.abs().max())
    assert sum(float(b.abs().max()) for b in g0) > 0
    unique = sum(len(r) for r in roots) + int(lengths.sum())  # each tree's prompt once + every segment
    assert stats["tokens"] == unique
    plain = sum(len(c) for c in set(map(tuple, ctx))) + int(lengths.sum())  # distinct contexts + responses
    assert plain > 1.4 * unique, (plain, unique)  # what the plain forward pays here


def test_a_row_without_its_parent_is_a_root(tiny_model):
    ctx, resp, lengths, _ = _edges(seed=1)
    keep = [i for i in range(len(ctx)) if len(ctx[i]) > 7 or i % 2 == 0]  # drop some depth-1 edges
    ctx, resp, lengths = [ctx[i] for i in keep], resp[keep], lengths[keep]
    mask = torch.arange(resp.shape[1])[None] < lengths[:, None]
    with torch.no_grad():
        lp0, _ = response_logprobs(tiny_model, ctx, resp, pad_id=PAD, temperature=1.0)
        lp1, _ = tree_response_logprobs(tiny_model, ctx, resp, lengths, pad_id=PAD, temperature=1.0, levels=2)
    torch.testing.assert_close(lp1[mask], lp0[mask], atol=1e-5, rtol=1e-5)
