"""Next-token sampling: temperature, top-k, top-p, and a per-node random stream.

Randomness. Every sampled segment (a node of the sampling tree; a plain sample is a one-segment
tree) owns a stream of uniforms drawn from its own ``torch.Generator``, seeded by
``node_seed(base_seed, path)`` where ``path`` = (prompt index, child index, child index, ...). The
t-th token of the segment is drawn by inverse-CDF sampling with the t-th uniform. So a sample does
not depend on which other sequences share its batch, when they finish, or whether its prefix was
computed once for a whole tree or re-encoded: the tree sampler can be checked token for token
against sampling each root-to-leaf path on its own. ``base_seed`` comes from the caller's
``torch.Generator`` (one draw per call), so results are deterministic given that generator.

Log-probs are always those of the full distribution ``softmax(logits / T)`` (T = 1 for greedy), not
of the top-k/top-p truncated one: that is what the trainer recomputes (docs/algorithms.md §0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_MASK64 = (1 << 64) - 1
_BLOCK = 256  # vocabulary block size of the two-level inverse CDF
_TOP_P_PREFIXES = (64, 1024)  # candidate counts tried before a full sort for top-p


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a bijective 64-bit integer hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def node_seed(base_seed: int, path: tuple[int, ...]) -> int:
    """The seed of the segment at ``path`` = (prompt index, child index, ...), in [0, 2^63)."""
    h = _mix64(base_seed & _MASK64)
    for p in path:  # injective in p for a given h; the multiply keeps h and p from cancelling
        h = _mix64(((h ^ p) * 0xD1342543DE82EF95 + 1) & _MASK64)
    return h >> 1


def draw_base_seed(generator: torch.Generator | None) -> int:
    """One 62-bit draw from ``generator`` (torch's default generator when None)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


def segment_uniforms(seeds: list[int], length: int) -> torch.Tensor:
    """``[len(seeds), length]`` float64 uniforms in [0, 1); row i is the stream of ``seeds[i]``."""
    out = torch.empty((len(seeds), length), dtype=torch.float64)
    gen = torch.Generator()
    for i, s in enumerate(seeds):
        gen.manual_seed(s)
        out[i] = torch.rand(length, generator=gen, dtype=torch.float64)
    return out


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index ``j`` with ``W[j-1] <= u * W[V-1] < W[j]`` where ``W`` is the cumulative sum of each row.

    Two levels: float32 sums of blocks of 256 weights, a float64 cumulative sum over the blocks,
    then one float64 cumulative sum inside the chosen block. That is one cheap pass over the
    ``[B, V]`` weights (a full cumulative sum is ~4x slower on CPU; torch.multinomial ~20x) with a
    relative error of the cumulative mass of ~1e-7.

    Args:
        weights: ``[B, V]`` non-negative, unnormalised; every row has a positive entry.
        u: ``[B]`` float64 uniforms in [0, 1).

    Returns:
        ``[B]`` long indices into the last dimension; never an index of weight 0.
    """
    batch, vocab = weights.shape
    rows = torch.arange(batch, device=weights.device)
    if vocab <= _BLOCK:
        cdf = weights.to(torch.float64).cumsum(-1)  # [B, V]
        idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    else:
        n_blocks = -(-vocab // _BLOCK)
        padded = F.pad(weights, (0, n_blocks * _BLOCK - vocab)) if vocab % _BLOCK else weights
        blocks = padded.view(batch, n_blocks, _BLOCK)  # [B, nb, bs]
        block_mass = blocks.sum(-1).to(torch.float64)  # [B, nb]
        cdf = block_mass.cumsum(-1)  # [B, nb]
        target = u * cdf[:, -1]  # [B]
        b = torch.searchsorted(cdf, target.unsqueeze(1), right=True).squeeze(1).clamp_(max=n_blocks - 1)  # [B]
        inner = blocks[rows, b].to(torch.float64).cumsum(-1)  # [B, bs]
        # Mass left inside block b, kept inside the block's own (float64) total so that rounding
        # between the two levels never walks past the block's last positive weight.
        rest = (target - (cdf[rows, b] - block_mass[rows, b])).clamp(min=0.0)  # [B]
        rest = torch.minimum(rest, inner[:, -1] * (1.0 - 2.0**-40))
        j = torch.searchsorted(inner, rest.unsqueeze(1), right=True).squeeze(1)  # [B]
        idx = b * _BLOCK + j
    idx = idx.clamp_(max=vocab - 1)
    # Guard: a zero-weight pick is only possible through rounding at u ~ 1; take the row's largest.
    bad = weights[rows, idx] <= 0
    if bool(bad.any()):
        idx = torch.where(bad, weights.argmax(-1), idx)
    return idx


def fast_argmax(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(-1)`` for ``[B, V]`` (first maximum), via block maxima: ~5x faster on CPU for a
    large vocabulary, where torch's argmax reduction is slow."""
    batch, vocab = x.shape
    if vocab <= 4 * _BLOCK:
        return x.argmax(-1)
    n_blocks = -(-vocab // _BLOCK)
    padded = F.pad(x, (0, n_blocks * _BLOCK - vocab), value=float("-inf")) if vocab % _BLOCK else x
    blocks = padded.view(batch, n_blocks, _BLOCK)  # [B, nb, bs]
    b = blocks.amax(-1).argmax(-1)  # [B] first block holding the maximum
    rows = torch.arange(batch, device=x.device)
    return b * _BLOCK + blocks[rows, b].argmax(-1)


def _sorted_candidates(x: torch.Tensor, probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most likely tokens of each row, most likely first: ``(probs [B, k], ids [B, k])``."""
    ids = x.topk(k, dim=-1, sorted=True).indices if k < x.shape[-1] else x.argsort(dim=-1, descending=True)
    return probs.gather(1, ids), ids


def _nucleus(x: torch.Tensor, probs: torch.Tensor, sizes: tuple[int, ...], top_p: float):
    """Top-p among the ``sizes[0]`` best tokens; rows whose nucleus is larger retry with the next
    size (the last is the whole vocabulary). Returns ``(weights, ids)``, zero-padded to a common
    width (weight 0 is never sampled)."""
    w, ids = _sorted_candidates(x, probs, sizes[0])  # [B, k]
    cum = w.cumsum(-1)  # [B, k]
    need = cum[:, -1] < top_p  # [B] nucleus not inside this prefix
    w = w * ((cum - w) < top_p)  # exclusive prefix mass below top_p; keeps the first token
    if len(sizes) > 1 and bool(need.any()):
        w_more, ids_more = _nucleus(x[need], probs[need], sizes[1:], top_p)
        pad = w_more.shape[1] - w.shape[1]
        w, ids = F.pad(w, (0, pad)), F.pad(ids, (0, pad))
        w[need], ids[need] = w_more, ids_more
    return w, ids


def _top_p_candidates(
    x: torch.Tensor, probs: torch.Tensor, top_k: int, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate weights (zero outside the kept set) and their token ids, ``[B, k]`` each.

    Top-k is applied first, then top-p on the distribution renormalised over the top-k set (the
    order transformers and vLLM use). The nucleus is the smallest prefix of the sorted tokens whose
    mass reaches ``top_p``. Without top-k it is searched among the best 64, then 1024 tokens, and
    only the rows that need it sort the whole vocabulary (slow on CPU: ~1 s for 64 x 49152).

    Args:
        x: ``[B, V]`` float32 logits already divided by the temperature.
        probs: ``softmax(x)``.
    """
    vocab = x.shape[-1]
    if top_k > 0:
        w, ids = _sorted_candidates(x, probs, min(top_k, vocab))  # [B, k]
        if top_p < 1.0:
            cum = w.cumsum(-1)
            w = w * ((cum - w) < top_p * cum[:, -1:])  # renormalised over the top-k set
        return w, ids
    sizes = tuple(k for k in _TOP_P_PREFIXES if k < vocab) + (vocab,)
    return _nucleus(x, probs, sizes, top_p)


def sample_next(
    logits: torch.Tensor, u: torch.Tensor, *, temperature: float, top_k: int, top_p: float,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row and return its log-prob under ``softmax(logits / T)``.

    Args:
        logits: ``[B, V]`` float32 next-token logits (modified in place).
        u: ``[B]`` float64 uniforms in [0, 1), one per row.
        temperature: 0 for greedy (log-probs then use T = 1).
        top_k: 0 = off (1 = greedy at any temperature). top_p: 1.0 = off.
        entropy: optional ``[B]`` float32 output, filled with the entropy of ``softmax(logits / T)``
            (the full distribution, like the log-probs): ``logsumexp(x) - Σ p·x``, two passes over
            the vocabulary and no ``[B, V]`` temporary.

    Returns:
        ``(tokens [B] long, logprobs [B] float32)``.
    """
    x = logits if temperature in (0.0, 1.0) else logits.div_(temperature)  # [B, V]
    probs = torch.softmax(x, dim=-1)  # [B, V] one fused pass; log-probs and sampling weights
    if entropy is not None:
        expected = torch.bmm(probs.unsqueeze(1), x.unsqueeze(2)).view(-1)  # [B] Σ_v p_v x_v
        entropy.copy_(torch.logsumexp(x, dim=-1) - expected)
    if temperature == 0.0 or top_k == 1:
        tokens = fast_argmax(x)
    elif top_k > 0 or top_p < 1.0:
        w, ids = _top_p_candidates(x, probs, top_k, top_p)  # [B, k] each
        tokens = ids.gather(1, inverse_cdf(w, u).unsqueeze(1)).squeeze(1)
    else:
        tokens = inverse_cdf(probs, u)
    # Sampled tokens have probability > 0, so the log is finite (float32 relative error ~1e-7).
    logprobs = torch.log(probs.gather(1, tokens.unsqueeze(1)).squeeze(1))  # [B]
    return tokens, logprobs
