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
of the top-k/top-p truncated one: that is what the trainer recomputes (ALGORITHMS.md §0).
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

    Two levels (blocks of 256, then inside the chosen block), accumulated in float64: one pass over
    the ``[B, V]`` weights instead of a full float32 cumulative sum (faster, and exact to float64).

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
        block_mass = blocks.sum(-1, dtype=torch.float64)  # [B, nb]
        cdf = block_mass.cumsum(-1)  # [B, nb]
        target = u * cdf[:, -1]  # [B]
        b = torch.searchsorted(cdf, target.unsqueeze(1), right=True).squeeze(1).clamp_(max=n_blocks - 1)  # [B]
        rest = target - (cdf[rows, b] - block_mass[rows, b])  # [B] mass left inside block b
        inner = blocks[rows, b].to(torch.float64).cumsum(-1)  # [B, bs]
        j = torch.searchsorted(inner, rest.unsqueeze(1), right=True).squeeze(1)  # [B]
        idx = b * _BLOCK + j
    idx = idx.clamp_(max=vocab - 1)
    # Rounding at a boundary can land on a zero-weight entry (padding, or past the last positive
    # one); take the row's largest weight there. Happens with probability ~1e-16 per draw.
    bad = weights[rows, idx] <= 0
    if bool(bad.any()):
        idx = torch.where(bad, weights.argmax(-1), idx)
    return idx


def _top_p_candidates(x: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate weights (sorted descending, zero outside the nucleus) and their token ids.

    Top-k is applied first, then top-p on the distribution renormalised over the top-k set (the
    order transformers and vLLM use). The nucleus is the smallest prefix of the sorted tokens whose
    mass reaches ``top_p``; it is searched among the best 64, then 1024 tokens before sorting the
    whole vocabulary, which gives the same set as a full sort.

    Args:
        x: ``[B, V]`` float32 logits already divided by the temperature.
    """
    vocab = x.shape[-1]
    m = x.max(-1, keepdim=True).values  # [B, 1]
    if top_p >= 1.0:
        vals, ids = x.topk(min(top_k, vocab) if top_k > 0 else vocab, dim=-1, sorted=True)  # [B, k]
        return torch.exp(vals - m), ids
    if top_k > 0:
        sizes = (min(top_k, vocab),)
        total = None  # renormalise over the top-k set
    else:
        sizes = tuple(k for k in _TOP_P_PREFIXES if k < vocab) + (vocab,)
        total = torch.exp(x - m).sum(-1, keepdim=True)  # [B, 1]
    for k in sizes:
        vals, ids = x.topk(k, dim=-1, sorted=True)  # [B, k]
        w = torch.exp(vals - m)  # [B, k]
        cum = w.cumsum(-1)  # [B, k]
        mass = cum[:, -1:] if total is None else total  # [B, 1]
        if k == sizes[-1] or bool((cum[:, -1:] >= top_p * mass).all()):
            keep = (cum - w) < top_p * mass  # exclusive prefix mass below top_p; keeps the first
            return w * keep, ids
    raise AssertionError("unreachable")


def sample_next(
    logits: torch.Tensor, u: torch.Tensor, *, temperature: float, top_k: int, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row and return its log-prob under ``softmax(logits / T)``.

    Args:
        logits: ``[B, V]`` float32 next-token logits (modified in place).
        u: ``[B]`` float64 uniforms in [0, 1), one per row.
        temperature: 0 for greedy (log-probs then use T = 1).
        top_k: 0 = off. top_p: 1.0 = off.

    Returns:
        ``(tokens [B] long, logprobs [B] float32)``.
    """
    if temperature == 0.0:
        tokens = logits.argmax(-1)  # [B]
        x = logits
    else:
        x = logits.div_(temperature) if temperature != 1.0 else logits  # [B, V]
        if top_k == 1:
            tokens = x.argmax(-1)
        elif top_k > 0 or top_p < 1.0:
            w, ids = _top_p_candidates(x, top_k, top_p)  # [B, k] each
            tokens = ids.gather(1, inverse_cdf(w, u).unsqueeze(1)).squeeze(1)
        else:
            # Plain sampling: reuse exp(x - max) for the log-normaliser (one pass fewer).
            m = x.max(-1, keepdim=True).values  # [B, 1]
            w = torch.exp(x - m)  # [B, V]
            tokens = inverse_cdf(w, u)
            log_z = m.squeeze(1) + torch.log(w.sum(-1))  # [B]
            return tokens, (x.gather(1, tokens.unsqueeze(1)).squeeze(1) - log_z).float()
    logprobs = x.gather(1, tokens.unsqueeze(1)).squeeze(1) - torch.logsumexp(x, dim=-1)  # [B]
    return tokens, logprobs.float()
