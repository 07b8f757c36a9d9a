"""Shared tensor math: masked statistics, KL estimators, loss aggregation, log-probs, entropy.

Everything here is a pure function of tensors and plain scalars (no config objects, no I/O, no
``torch.distributed``). Shapes: ``B`` sequences, ``T`` response positions, ``V`` vocabulary;
``mask`` is ``True``/1 on valid response tokens. Padding positions may hold any *finite*
garbage: every function here selects with ``torch.where`` (not ``x * mask``), so padding never
changes a result and never receives gradient.

Sources (see docs/algorithms.md §0):
- Aggregation modes follow verl ``core_algos.agg_loss``. Decision 5 (docs/algorithms.md): ``seq-mean-token-sum-norm``
  is Σ m·L / (num_seqs × C) (TRL's Dr. GRPO form; verl omits the 1/num_seqs).
- KL estimators k1/k2/k3/abs follow verl ``kl_penalty_forward`` and SPO
  ``_compute_kl_penalty``. Clamps (verl): for k3 the negated log-ratio is clamped to [-20, 20]
  before ``exp`` and the estimate to [-10, 10]. k1, k2 and abs need no clamp (no ``exp``).
  ``"k3+"`` is the straight-through variant: forward value k3, gradient of k2.
- Token alignment and temperature (§0): ``logprobs_from_logits`` expects logits already aligned
  with ``labels`` (logits[:, t] predicts labels[:, t]) and divides logits by the sampling
  temperature.

Deliberate choices:
- Empty masks give 0 (not NaN) for means, variances and aggregates: a micro-batch whose tokens
  were all filtered out contributes nothing instead of poisoning the step.
- ``masked_var(unbiased=True)`` with a single valid element returns 0 (no Bessel correction is
  possible; the population variance of one element is 0).
- ``masked_whiten`` computes its statistics in float64 from (count, Σx, Σx²) moments so that
  the loop can all-reduce the moments across micro-batches and ranks and whiten every part
  with the statistics of the whole batch (decision 3 in docs/algorithms.md); the formula is
  ``(x - mean) * rsqrt(var + eps)`` (SPO/TRL). ReaLHF's ``(x - mean) / (std + 1e-5)`` differs
  by O(eps/std).

Micro-batch / rank contract of ``aggregate``
--------------------------------------------
A loop that splits one optimizer step's batch into micro-batches (gradient accumulation) and
across ranks gets exactly the full-batch loss if, for every part, it calls
``aggregate(loss_mat, mask, mode, constant=C, num_tokens=N_tok, num_seqs=N_seq)`` with
``N_tok, N_seq = aggregate_counts(mask)`` summed over all micro-batches of the step on all
ranks (an all-reduce of a 2-element tensor), and then *sums* the parts (over micro-batches by
gradient accumulation, over ranks by an all-reduce SUM of gradients — or, with data-parallel
engines that AVERAGE gradients over ranks, multiplies each part by the world size).
Every mode is linear in per-sequence sums once the denominators are global, and no sequence is
split between parts, which is why the sum is exact. ``constant`` must be the configured maximum
response length, not the padded width of a micro-batch.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

AGGREGATION_MODES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)
KL_KINDS = ("k1", "k2", "k3", "k3+", "abs")

# verl's clamps for the k3 ("low_var_kl") estimator.
K3_LOG_RATIO_CLAMP = 20.0
K3_VALUE_CLAMP = 10.0

# Chunks for the vocabulary-wide reductions: at most this many elements of float32 scratch
# (64 MiB) are alive at once, whatever B·T·V is.
_CHUNK_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------------
def _bool(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ x over valid positions (over ``dim``, or over everything when ``dim`` is None).

    Args:
        x: any shape, e.g. ``[B, T]``.
        mask: same shape as ``x``; True/1 = valid.
    """
    masked = torch.where(_bool(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over valid positions; 0 where there are none.

    Args:
        x: ``[B, T]`` (any shape).
        mask: same shape; True/1 = valid.
        dim: reduce only this dimension (e.g. ``dim=-1`` gives per-sequence means ``[B]``).
    """
    m = _bool(mask)
    count = m.sum() if dim is None else m.sum(dim)
    return masked_sum(x, m, dim) / count.clamp(min=1).to(x.dtype)


def masked_var(x: Tensor, mask: Tensor, dim: int | None = None, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over valid positions (two-pass, numerically stable).

    ``unbiased`` applies Bessel's correction n/(n−1) where n > 1; with n ≤ 1 the result is 0.
    """
    m = _bool(mask)
    mean = masked_mean(x, m, dim)
    centered = x - (mean if dim is None else mean.unsqueeze(dim))
    count = (m.sum() if dim is None else m.sum(dim)).to(x.dtype)
    var = masked_sum(centered * centered, m, dim) / count.clamp(min=1)
    if unbiased:
        var = var * torch.where(count > 1, count / (count - 1).clamp(min=1), torch.ones_like(count))
    return var


def masked_moments(x: Tensor, mask: Tensor) -> Tensor:
    """``[count, Σx, Σx²]`` over valid positions, in float64 (detached).

    Moments add up: summing them over micro-batches and all-reducing (SUM) over ranks gives the
    moments of the whole batch, which ``masked_whiten(..., moments=...)`` then uses.
    """
    m = _bool(mask)
    x64 = torch.where(m, x.detach().double(), torch.zeros((), dtype=torch.float64, device=x.device))
    return torch.stack([m.sum().double(), x64.sum(), (x64 * x64).sum()])  # [3]


def moment_stats(moments: Tensor, unbiased: bool) -> tuple[Tensor, Tensor, bool] | None:
    """``(mean, variance, flat)`` in float64 from ``[count, Σx, Σx²]``; None for an empty set.

    ``flat``: zero spread up to rounding (the variance from the moments is ≤ 64 ulp of E[x²]),
    where callers return exactly 0 instead of amplifying rounding (decision 11 in docs/algorithms.md).
    ``unbiased``: Bessel-corrected variance.
    """
    count, total, total_sq = moments.double().unbind()
    if count <= 0:
        return None
    mean = total / count
    second = total_sq / count
    var = (second - mean * mean).clamp(min=0.0)
    flat = bool(var <= 64 * torch.finfo(torch.float64).eps * second)
    if unbiased and count > 1:
        var = var * count / (count - 1)
    return mean, var, flat


def masked_whiten(
    x: Tensor,
    mask: Tensor,
    eps: float = 1e-8,
    unbiased: bool = True,
    shift_mean: bool = True,
    *,
    moments: Tensor | None = None,
) -> Tensor:
    """Whiten ``x`` with the mean/variance of its valid positions: ``(x − μ)·rsqrt(σ² + eps)``.

    Args:
        x: ``[B, T]`` (any shape), e.g. advantages.
        mask: same shape; statistics use valid positions only and padding is set to 0.
        eps: added to the variance.
        unbiased: Bessel-corrected variance (SPO/TRL) or population variance (ReaLHF PPO).
        shift_mean: if False, the mean is kept: ``(x − μ)·rsqrt(σ² + eps) + μ`` (verl/TRL's
            meaning of the option).
        moments: optional ``[count, Σx, Σx²]`` of the *whole* batch (``masked_moments`` summed
            over micro-batches and ranks); default: the moments of ``(x, mask)`` itself.

    Returns:
        ``[B, T]`` in ``x.dtype``; all zeros when the batch has no valid position. A set with zero
        spread (every valid value equal; its variance from the moments is then only rounding,
        ≤ 64 ulp of E[x²]) gets exactly 0 (μ with ``shift_mean=False``): rsqrt(eps) would
        otherwise blow its rounding up to ~1e-3 (decision 11 in docs/algorithms.md).
    """
    m = _bool(mask)
    if moments is None:
        moments = masked_moments(x, m)
    stats = moment_stats(moments, unbiased)
    if stats is None:
        return torch.zeros_like(x)
    mean, var, flat = stats
    scale = torch.rsqrt(var + eps).to(x.dtype)
    centered = torch.zeros_like(x) if flat else (x - mean.to(x.dtype)) * scale
    out = centered if shift_mean else centered + mean.to(x.dtype)
    return torch.where(m, out, torch.zeros((), dtype=x.dtype, device=x.device))


# --------------------------------------------------------------------------------------------
# KL estimators
# --------------------------------------------------------------------------------------------
def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str) -> Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from tokens sampled from π_θ.

    With δ = logp − ref_logp:
        k1 = δ;  k2 = ½δ²;  k3 = exp(−δ) + δ − 1;  abs = |δ|;
        k3+ = value of k3, gradient of k2 (straight-through).
    For k3/k3+ the value uses −δ clamped to [−20, 20] and is clamped to [−10, 10] (verl).

    To estimate KL(old ‖ new) from rollout tokens (PPO's approx-KL) pass ``(old_logp, logp)``.

    Args:
        logp: ``[B, T]`` log-probs of the sampled tokens under the policy.
        ref_logp: ``[B, T]`` log-probs of the same tokens under the reference.
        kind: one of ``KL_KINDS``.

    Returns:
        ``[B, T]`` per-token estimates (unmasked; reduce with ``aggregate``/``masked_mean``).
    """
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL estimator {kind!r}; valid: {', '.join(KL_KINDS)}")
    delta = logp - ref_logp  # [B, T]
    if kind == "k1":
        return delta
    if kind == "k2":
        return 0.5 * delta * delta
    if kind == "abs":
        return delta.abs()
    neg = (-delta).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)  # [B, T]
    k3 = (torch.exp(neg) - neg - 1.0).clamp(-K3_VALUE_CLAMP, K3_VALUE_CLAMP)
    if kind == "k3":
        return k3
    k2 = 0.5 * delta * delta
    return k2 + (k3 - k2).detach()  # "k3+": forward k3, backward d(k2)/dδ = δ


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------
def aggregate_counts(mask: Tensor) -> Tensor:
    """``[num_tokens, num_seqs]`` of a ``[B, T]`` mask, as float64 (detached).

    num_tokens = valid tokens; num_seqs = sequences with at least one valid token. Sum this over
    all micro-batches of a step and all-reduce it over ranks to get the global denominators for
    ``aggregate``.
    """
    m = _bool(mask)
    return torch.stack([m.sum().double(), m.any(dim=-1).sum().double()])  # [2]


def aggregate(
    loss_mat: Tensor,
    mask: Tensor,
    mode: str,
    constant: float | None = None,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
) -> Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar (verl ``agg_loss``).

    Modes (L = loss_mat, m = mask):
        token-mean:               Σ_{i,t} m·L / N_tok
        seq-mean-token-mean:      Σ_i [Σ_t m·L / Σ_t m] / N_seq          (original GRPO)
        seq-mean-token-sum:       Σ_i Σ_t m·L / N_seq
        seq-mean-token-sum-norm:  Σ_{i,t} m·L / (N_seq · C)   (Dr. GRPO; decision 5, docs/algorithms.md)

    N_tok and N_seq default to this call's valid-token count and number of sequences with at
    least one valid token. Pass the *global* values (``aggregate_counts`` summed over
    micro-batches and ranks) and the sum of the per-part results equals the full-batch result
    for every mode (see the module docstring). Both may always be passed: each mode uses the
    one it needs. Sequences with no valid token contribute 0 in every mode.

    Args:
        loss_mat: ``[B, T]`` per-token loss.
        mask: ``[B, T]`` True/1 on tokens that count.
        mode: one of ``AGGREGATION_MODES``.
        constant: C of ``seq-mean-token-sum-norm``: the configured maximum response length.
            Defaults to ``T`` (verl's fallback), which is only micro-batch-invariant when every
            micro-batch is padded to the maximum length.
        num_tokens: global valid-token count (token-mean).
        num_seqs: global sequence count (seq-mean-* modes).

    Returns:
        0-d tensor.
    """
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid: {', '.join(AGGREGATION_MODES)}")
    m = _bool(mask)
    dtype = loss_mat.dtype
    if mode == "token-mean":
        denom = m.sum() if num_tokens is None else num_tokens
        return masked_sum(loss_mat, m) / torch.as_tensor(denom, dtype=dtype).clamp(min=1)
    n_seq = m.any(dim=-1).sum() if num_seqs is None else num_seqs
    n_seq = torch.as_tensor(n_seq, dtype=dtype).clamp(min=1)
    seq_sums = masked_sum(loss_mat, m, dim=-1)  # [B]
    if mode == "seq-mean-token-mean":
        seq_means = seq_sums / m.sum(-1).clamp(min=1).to(dtype)  # [B]
        return seq_means.sum() / n_seq
    if mode == "seq-mean-token-sum":
        return seq_sums.sum() / n_seq
    c = loss_mat.shape[-1] if constant is None else constant
    if c <= 0:
        raise ValueError(f"aggregate: constant must be > 0, got {c}")
    return seq_sums.sum() / (n_seq * c)


# --------------------------------------------------------------------------------------------
# Flat pools of valid tokens (batch-wide selections across micro-batches and ranks)
# --------------------------------------------------------------------------------------------
def flatten_valid(x: Tensor, mask: Tensor) -> Tensor:
    """The valid entries of ``x`` ``[B, T]`` as a 1-D tensor ``[N]`` in row-major order."""
    return x[_bool(mask)]


def unflatten_valid(flat: Tensor, mask: Tensor, fill: float | bool = 0) -> Tensor:
    """Inverse of ``flatten_valid``: scatter ``flat`` ``[N]`` back to ``[B, T]`` (``fill`` elsewhere)."""
    m = _bool(mask)
    if flat.numel() != int(m.sum()):
        raise ValueError(f"unflatten_valid: {flat.numel()} values for {int(m.sum())} valid positions")
    out = torch.full(m.shape, fill, dtype=flat.dtype, device=flat.device)
    out[m] = flat
    return out


def _ratio_count(ratio: float, n: int, rounding: str) -> int:
    """⌈ratio·n⌉ or ⌊ratio·n⌋ without float artefacts (in floats 0.07·100 is 7.000000000000001
    and 0.0003·10000 is 2.9999999999999996)."""
    exact = ratio * n
    nearest = round(exact)
    if math.isclose(exact, nearest, rel_tol=1e-12, abs_tol=1e-9):
        return int(nearest)
    return int(math.ceil(exact) if rounding == "ceil" else math.floor(exact))


def masked_topk(values: Tensor, mask: Tensor, k: int) -> Tensor:
    """Bool mask of the ``k`` largest valid ``values`` (never a padding position).

    Ties are broken deterministically by row-major position (earlier first), so every rank that
    runs this on the same pool gets the same selection.

    Args:
        values: ``[B, T]`` scores (entropy, covariance, …).
        mask: ``[B, T]`` valid positions.
        k: number to keep; clamped to [0, number of valid positions].
    """
    m = _bool(mask)
    flat = flatten_valid(values.detach(), m)  # [N]
    k = max(0, min(int(k), flat.numel()))
    order = torch.sort(flat, descending=True, stable=True).indices[:k]  # [k]
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[order] = True
    return unflatten_valid(keep, m, fill=False)


# --------------------------------------------------------------------------------------------
# Log-probs and entropy from logits, chunked over tokens, in float32 (float64 stays float64)
# --------------------------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunks(logits: Tensor):
    """(b, slice of t) pieces of ``[B, T, V]`` logits holding at most ``_CHUNK_ELEMENTS`` values.

    Chunking inside each row keeps every piece a view, also for non-contiguous logits such as
    ``model_logits[:, :-1]`` (a reshape to ``[B·T, V]`` would copy them all).
    """
    B, T, V = logits.shape
    step = max(1, _CHUNK_ELEMENTS // max(V, 1))
    for b in range(B):
        for s in range(0, T, step):
            yield b, slice(s, min(s + step, T))


class _TokenLogProb(torch.autograd.Function):
    """log softmax(z/τ)[label] per token, without keeping a float32 copy of the logits.

    Backward recomputes the softmax chunk by chunk from the saved logits and log-normaliser:
    d lp / d z = (onehot(label) − softmax(z/τ)) / τ.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, temperature: float) -> Tensor:
        # logits [B, T, V] (any float dtype), labels [B, T] (valid indices)
        cdtype = _compute_dtype(logits.dtype)
        out = torch.empty(labels.shape, dtype=cdtype, device=logits.device)  # [B, T]
        lse = torch.empty(labels.shape, dtype=cdtype, device=logits.device)  # [B, T]
        for b, t in _chunks(logits):
            z = logits[b, t].to(cdtype) / temperature  # [n_c, V]
            lse[b, t] = torch.logsumexp(z, dim=-1)
            out[b, t] = z.gather(-1, labels[b, t, None]).squeeze(-1) - lse[b, t]
        ctx.save_for_backward(logits, labels, lse)
        ctx.temperature = temperature
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, labels, lse = ctx.saved_tensors
        temperature = ctx.temperature
        cdtype = lse.dtype
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)  # [B, T, V]
        for b, t in _chunks(logits):
            z = logits[b, t].to(cdtype) / temperature  # [n_c, V]
            g_out = grad_out[b, t, None].to(cdtype)  # [n_c, 1]
            g = -torch.exp(z - lse[b, t, None]) * g_out  # [n_c, V]
            g.scatter_add_(-1, labels[b, t, None], g_out)
            grad[b, t] = (g / temperature).to(logits.dtype)
        return grad, None, None


class _TokenEntropy(torch.autograd.Function):
    """H = −Σ_j p_j log p_j with p = softmax(z/τ), chunked; dH/dz_j = −p_j (log p_j + H) / τ."""

    @staticmethod
    def forward(ctx, logits: Tensor, temperature: float) -> Tensor:
        cdtype = _compute_dtype(logits.dtype)
        ent = torch.empty(logits.shape[:2], dtype=cdtype, device=logits.device)  # [B, T]
        lse = torch.empty(logits.shape[:2], dtype=cdtype, device=logits.device)  # [B, T]
        for b, t in _chunks(logits):
            z = logits[b, t].to(cdtype) / temperature  # [n_c, V]
            lse_c = torch.logsumexp(z, dim=-1)  # [n_c]
            p = torch.exp(z - lse_c[:, None])  # [n_c, V]
            ent[b, t] = lse_c - (p * z).sum(-1)
            lse[b, t] = lse_c
        ctx.save_for_backward(logits, lse, ent)
        ctx.temperature = temperature
        return ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, lse, ent = ctx.saved_tensors
        temperature = ctx.temperature
        cdtype = lse.dtype
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)  # [B, T, V]
        for b, t in _chunks(logits):
            z = logits[b, t].to(cdtype) / temperature  # [n_c, V]
            logp = z - lse[b, t, None]  # [n_c, V]
            g = -torch.exp(logp) * (logp + ent[b, t, None])  # [n_c, V]
            grad[b, t] = (g * grad_out[b, t, None].to(cdtype) / temperature).to(logits.dtype)
        return grad, None


def logprobs_from_logits(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-token log-probabilities ``log softmax(logits / temperature)[labels]``.

    Memory: the vocabulary-wide work runs in chunks of at most 2^24 float32 elements, each a view
    (non-contiguous logits such as ``out.logits[:, :-1]`` are not copied); no float32 copy of the
    logits is kept for backward (the gradient is recomputed from the saved logits
    and the per-token log-normaliser). Computed in float32 (float64 input stays float64).

    Args:
        logits: ``[B, T, V]``, already aligned so that ``logits[:, t]`` predicts ``labels[:, t]``
            (drop the last logit and shift labels left by one beforehand; docs/algorithms.md §0).
        labels: ``[B, T]`` token ids; negative ids (e.g. −100 for prompt/padding) give 0.
        temperature: the sampling temperature (> 0).

    Returns:
        ``[B, T]`` float32 (float64 for float64 logits).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits [B, T, V] and labels [B, T], got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    valid = labels >= 0  # [B, T]
    safe = torch.where(valid, labels, torch.zeros_like(labels))  # [B, T]
    lp = _TokenLogProb.apply(logits, safe, float(temperature))  # [B, T]
    return torch.where(valid, lp, torch.zeros((), dtype=lp.dtype, device=lp.device))


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of the next-token distribution ``softmax(logits / temperature)`` at every position.

    Chunked and float32 like ``logprobs_from_logits``; differentiable (for an entropy bonus).

    Args:
        logits: ``[B, T, V]``.
        temperature: the sampling temperature (> 0).

    Returns:
        ``[B, T]`` float32 (float64 for float64 logits), in nats.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.dim() != 3:
        raise ValueError(f"expected logits [B, T, V], got {tuple(logits.shape)}")
    return _TokenEntropy.apply(logits, float(temperature))  # [B, T]
