"""Sampling primitives against direct references: inverse CDF, top-p nucleus, top-k, seeds."""
import pytest
import torch

from rltrain.rollout.sampling import (
    _top_p_candidates,
    fast_argmax,
    inverse_cdf,
    node_seed,
    sample_next,
    segment_uniforms,
)


@pytest.mark.parametrize("vocab", [7, 256, 1000, 4096])
def test_inverse_cdf_equals_float64_cumsum(vocab):
    g = torch.Generator().manual_seed(vocab)
    w = torch.rand(6, vocab, generator=g) ** 4
    w[:, ::3] = 0  # zero-weight tokens are never chosen
    w[0] = 0
    w[0, -1] = 0.5  # all mass on the last token
    u = torch.rand(6, generator=g, dtype=torch.float64)
    for uu in (u, torch.zeros(6, dtype=torch.float64), torch.full((6,), 1 - 2**-53, dtype=torch.float64)):
        cdf = w.double().cumsum(-1)
        ref = torch.searchsorted(cdf, (uu * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1).clamp(max=vocab - 1)
        got = inverse_cdf(w, uu)
        # float32 block sums can only move a draw across a boundary by ~1e-7 of the mass
        close = torch.abs(cdf.gather(1, got.unsqueeze(1)).squeeze(1) / cdf[:, -1] - uu) < 1e-6
        assert torch.all((got == ref) | close)
        assert torch.all(w.gather(1, got.unsqueeze(1)) > 0)
    assert int(inverse_cdf(w, u)[0]) == vocab - 1


def _nucleus_ref(x, top_k, top_p):
    """Set of token ids of the top-k-then-top-p support, by a full sort."""
    out = []
    for row in x:
        order = row.argsort(descending=True)
        if top_k:
            order = order[:top_k]
        p = torch.softmax(row[order].double(), -1)
        cum_before = p.cumsum(0) - p
        out.append(set(order[cum_before < top_p].tolist()))
    return out


@pytest.mark.parametrize("top_k,top_p", [(0, 0.5), (0, 0.9), (0, 0.999), (20, 0.7), (5, 1.0)])
def test_top_p_candidates_equal_full_sort(top_k, top_p):
    g = torch.Generator().manual_seed(0)
    # peaked rows (nucleus inside the best 64), flat rows (beyond 1024: full sort)
    x = torch.cat([torch.randn(3, 3000, generator=g) * 6, torch.randn(3, 3000, generator=g) * 0.1])
    w, ids = _top_p_candidates(x, torch.softmax(x, -1), top_k, top_p)
    got = [set(i[wi > 0].tolist()) for wi, i in zip(w, ids)]
    assert got == _nucleus_ref(x, top_k, top_p)


def test_sampled_frequencies_follow_tempered_distribution():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5] + [-30.0] * 295)  # 300 tokens, 5 plausible
    n = 20000
    u = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for temperature, top_p in ((1.0, 1.0), (0.5, 1.0), (1.0, 0.8)):
        tokens, logprobs = sample_next(logits.repeat(n, 1), u, temperature=temperature, top_k=0, top_p=top_p)
        p = torch.softmax(logits / temperature, -1)
        torch.testing.assert_close(logprobs, torch.log(p[tokens]), atol=1e-5, rtol=0)  # untruncated
        q = p.clone()
        if top_p < 1:
            order = p.argsort(descending=True)
            keep = (p[order].cumsum(0) - p[order]) < top_p
            q = torch.zeros_like(p)
            q[order[keep]] = p[order[keep]]
        q = q / q.sum()
        freq = torch.bincount(tokens, minlength=300).double() / n
        assert torch.all(torch.abs(freq - q) < 0.015), (temperature, top_p, freq[:5], q[:5])


def test_greedy_and_top_k_one():
    logits = torch.randn(4, 500, generator=torch.Generator().manual_seed(1))
    u = torch.rand(4, dtype=torch.float64)
    greedy, lp = sample_next(logits.clone(), u, temperature=0.0, top_k=0, top_p=1.0)
    assert torch.equal(greedy, logits.argmax(-1))
    torch.testing.assert_close(lp, torch.log_softmax(logits, -1).gather(1, greedy.unsqueeze(1)).squeeze(1))
    top1, _ = sample_next(logits.clone(), u, temperature=0.7, top_k=1, top_p=1.0)
    assert torch.equal(top1, greedy)


def test_node_seeds_and_streams():
    assert node_seed(1, (0, 1)) == node_seed(1, (0, 1))
    seeds = {node_seed(b, p) for b in (1, 2) for p in [(0,), (1,), (0, 0), (0, 1), (1, 0)]}
    assert len(seeds) == 10 and all(0 <= s < 2**63 for s in seeds)
    a = segment_uniforms([5, 6, 5], 16)
    assert torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])
    assert a.dtype == torch.float64 and torch.all((a >= 0) & (a < 1))


@pytest.mark.parametrize("vocab", [100, 3000, 4096])
def test_fast_argmax_is_first_maximum(vocab):
    x = torch.randn(5, vocab, generator=torch.Generator().manual_seed(vocab))
    x[1, [7, vocab - 1]] = 100.0  # tie: the first index wins
    x[2, :] = 0.0
    assert torch.equal(fast_argmax(x), x.argmax(-1))
    assert int(fast_argmax(x)[1]) == 7 and int(fast_argmax(x)[2]) == 0
