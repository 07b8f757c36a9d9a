"""rltrain.algos.core against hand-derived numbers and invariants."""
from __future__ import annotations

import math

import pytest
import torch

from rltrain.algos import core
from rltrain.algos.core import (
    aggregate,
    aggregate_counts,
    flatten_valid,
    kl_estimate,
    logprobs_from_logits,
    masked_mean,
    masked_moments,
    masked_topk,
    masked_var,
    masked_whiten,
    token_entropy,
    unflatten_valid,
)

from .conftest import right_padded_mask

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_masked_mean_hand():
    """Valid values {1, 2, 4}: mean 7/3; per row [1.5, 4]; padding (3, 5, 6) ignored."""
    assert masked_mean(X, M).item() == pytest.approx(7 / 3)
    assert torch.allclose(masked_mean(X, M, dim=-1), torch.tensor([1.5, 4.0]))
    assert masked_mean(X, torch.zeros_like(M)).item() == 0.0


def test_masked_var_hand():
    """{1, 2, 4}: deviations from 7/3 are −4/3, −1/3, 5/3; Σ squares = 42/9 = 14/3.
    Population variance 14/9, unbiased 14/6 = 7/3. One valid element → 0."""
    assert masked_var(X, M, unbiased=False).item() == pytest.approx(14 / 9)
    assert masked_var(X, M).item() == pytest.approx(7 / 3)
    one = torch.tensor([[1, 0, 0], [0, 0, 0]])
    assert masked_var(X, one).item() == 0.0
    # per-row: row 0 {1, 2} unbiased var 0.5, row 1 {4} → 0
    assert torch.allclose(masked_var(X, M, dim=-1), torch.tensor([0.5, 0.0]))


def test_masked_whiten_hand():
    """(x − 7/3)·rsqrt(7/3 + eps) on valid positions, 0 on padding; whitened values have masked
    mean 0 and unbiased variance 1. shift_mean=False adds the mean back (verl/TRL)."""
    w = masked_whiten(X, M)
    s = math.sqrt(7 / 3 + 1e-8)
    expected = torch.tensor([[(1 - 7 / 3) / s, (2 - 7 / 3) / s, 0.0], [(4 - 7 / 3) / s, 0.0, 0.0]])
    assert torch.allclose(w, expected, atol=1e-6)
    assert masked_mean(w, M).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(w, M).item() == pytest.approx(1.0, abs=1e-6)
    pop = masked_whiten(X, M, unbiased=False)
    assert pop[0, 0].item() == pytest.approx((1 - 7 / 3) / math.sqrt(14 / 9), rel=1e-6)
    scaled = masked_whiten(X, M, shift_mean=False)
    assert scaled[1, 0].item() == pytest.approx((4 - 7 / 3) / s + 7 / 3, rel=1e-6)
    assert torch.equal(masked_whiten(X, torch.zeros_like(M)), torch.zeros_like(X))


def test_masked_whiten_global_moments_equal_full_batch():
    """Summing masked_moments over parts (what an all-reduce does) and whitening each part with
    them gives exactly the full-batch whitening."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g)
    mask = right_padded_mask([5, 0, 3, 1, 4, 2], 5)
    full = masked_whiten(x, mask)
    parts = [(x[:2], mask[:2]), (x[2:5], mask[2:5]), (x[5:], mask[5:])]
    moments = sum(masked_moments(xp, mp) for xp, mp in parts)
    whitened = torch.cat([masked_whiten(xp, mp, moments=moments) for xp, mp in parts])
    assert torch.allclose(whitened, full, atol=1e-6)
    # and differs from per-part whitening, so the test can tell the two apart
    local = torch.cat([masked_whiten(xp, mp) for xp, mp in parts])
    assert not torch.allclose(local, full, atol=1e-3)


# --------------------------------------------------------------------------------------------
# KL estimators
# --------------------------------------------------------------------------------------------
def test_kl_estimators_hand():
    """δ = ln 2: k1 = ln 2, k2 = ½ln²2 = 0.240227, k3 = ½ + ln 2 − 1 = 0.193147, abs = ln 2.
    δ = −ln 2: k1 = −ln 2, k3 = 2 − ln 2 − 1 = 0.306853, abs = ln 2."""
    ln2 = math.log(2.0)
    logp = torch.tensor([0.0, -ln2])
    ref = torch.tensor([-ln2, 0.0])
    assert torch.allclose(kl_estimate(logp, ref, "k1"), torch.tensor([ln2, -ln2]))
    assert torch.allclose(kl_estimate(logp, ref, "k2"), torch.tensor([0.5 * ln2**2] * 2))
    assert torch.allclose(kl_estimate(logp, ref, "k3"), torch.tensor([0.5 + ln2 - 1, 1 - ln2]), atol=1e-6)
    assert torch.allclose(kl_estimate(logp, ref, "abs"), torch.tensor([ln2, ln2]))
    assert torch.allclose(kl_estimate(logp, ref, "k3+"), kl_estimate(logp, ref, "k3"))


@pytest.mark.parametrize("kind", core.KL_KINDS)
def test_kl_is_zero_on_policy(kind):
    """Every estimator is exactly 0 when the policy equals the reference."""
    lp = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(kl_estimate(lp, lp.clone(), kind), torch.zeros(3, 4))


def test_k3_clamps():
    """δ = −50: −δ is clamped to 20 and exp(20) − 20 − 1 ≈ 4.9e8 is clamped to 10.
    δ = +50: −δ clamped to −20, k3 = e^−20 + 20 − 1 ≈ 19 → clamped to 10."""
    out = kl_estimate(torch.tensor([-50.0, 50.0]), torch.tensor([0.0, 0.0]), "k3")
    assert torch.equal(out, torch.tensor([10.0, 10.0]))


def test_k3_plus_has_k2_gradient():
    """k3+ = k3 in value but its gradient is that of k2: d(½δ²)/d logp = δ. k3's own gradient is
    1 − e^−δ, which differs."""
    logp = torch.tensor([0.3, -0.7, 1.1], requires_grad=True)
    ref = torch.tensor([0.0, 0.2, -0.4])
    kl_estimate(logp, ref, "k3+").sum().backward()
    delta = (logp - ref).detach()
    assert torch.allclose(logp.grad, delta)
    logp.grad = None
    kl_estimate(logp, ref, "k3").sum().backward()
    assert torch.allclose(logp.grad, 1 - torch.exp(-delta))


def test_kl_unknown_kind_lists_valid():
    with pytest.raises(ValueError, match="k1, k2, k3, k3\\+, abs"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "abs"])
def test_kl_gradcheck(kind):
    g = torch.Generator().manual_seed(2)
    logp = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ref = (logp.detach() + 0.5 + torch.rand(2, 3, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: kl_estimate(a, b, kind), (logp, ref))


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------
L = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
LM = torch.tensor([[1, 1, 0], [1, 1, 1]])


def test_aggregate_modes_hand():
    """Valid: row 0 {1, 2} (sum 3, mean 1.5), row 1 {4, 5, 6} (sum 15, mean 5); 5 tokens.
    token-mean 18/5; seq-mean-token-mean (1.5 + 5)/2; seq-mean-token-sum (3 + 15)/2;
    seq-mean-token-sum-norm 18/(2·C): C = 4 → 2.25, default C = T = 3 → 3."""
    assert aggregate(L, LM, "token-mean").item() == pytest.approx(3.6)
    assert aggregate(L, LM, "seq-mean-token-mean").item() == pytest.approx(3.25)
    assert aggregate(L, LM, "seq-mean-token-sum").item() == pytest.approx(9.0)
    assert aggregate(L, LM, "seq-mean-token-sum-norm", constant=4).item() == pytest.approx(2.25)
    assert aggregate(L, LM, "seq-mean-token-sum-norm").item() == pytest.approx(3.0)


def test_aggregate_explicit_denominators_and_empty_rows():
    """num_tokens/num_seqs replace the local counts: token-mean 18/10; seq-mean-token-sum 18/6.
    A row with no valid token is not a sequence: adding one leaves every mode unchanged."""
    assert aggregate(L, LM, "token-mean", num_tokens=10).item() == pytest.approx(1.8)
    assert aggregate(L, LM, "seq-mean-token-sum", num_seqs=6).item() == pytest.approx(3.0)
    L3 = torch.cat([L, torch.full((1, 3), 7.0)])
    M3 = torch.cat([LM, torch.zeros(1, 3, dtype=LM.dtype)])
    for mode in core.AGGREGATION_MODES:
        assert aggregate(L3, M3, mode, constant=4).item() == pytest.approx(aggregate(L, LM, mode, constant=4).item())
    assert torch.equal(aggregate_counts(M3), torch.tensor([5.0, 2.0], dtype=torch.float64))


def test_aggregate_unknown_mode_lists_valid():
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-mean"):
        aggregate(L, LM, "mean")


@pytest.mark.parametrize("mode", core.AGGREGATION_MODES)
def test_aggregate_micro_batches_with_global_denominators_equal_full_batch(mode):
    """Split 7 sequences into micro-batches (each trimmed to its own padded width, as a loop
    would) and two 'ranks'; with the global counts the summed losses and gradients equal the
    full-batch ones. Without them token-mean differs (the test can tell)."""
    g = torch.Generator().manual_seed(3)
    lengths = [6, 1, 0, 4, 2, 6, 3]
    T = 6
    mask = right_padded_mask(lengths, T)
    base = torch.randn(7, T, generator=g, dtype=torch.float64)
    w_full = base.clone().requires_grad_()
    full = aggregate(w_full * 2.0, mask, mode, constant=8)
    full.backward()

    w = base.clone().requires_grad_()
    parts = [[0, 1], [2, 3, 4], [5], [6]]  # rank 0: parts 0-1, rank 1: parts 2-3
    counts = sum(aggregate_counts(mask[idx]) for idx in parts)
    total = 0.0
    for idx in parts:
        width = max(max(lengths[i] for i in idx), 1)
        lm, mm = (w * 2.0)[idx, :width], mask[idx, :width]
        total = total + aggregate(lm, mm, mode, constant=8, num_tokens=counts[0], num_seqs=counts[1])
    total.backward()
    assert total.item() == pytest.approx(full.item(), rel=1e-12)
    assert torch.allclose(w.grad, w_full.grad)
    local = sum(aggregate((base * 2.0)[idx], mask[idx], mode, constant=8) for idx in parts)
    assert local.item() != pytest.approx(full.item(), rel=1e-6)


@pytest.mark.parametrize("mode", core.AGGREGATION_MODES)
def test_aggregate_gradcheck(mode):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    mask = right_padded_mask([4, 2, 0], 4)
    assert torch.autograd.gradcheck(lambda t: aggregate(t, mask, mode, constant=5), (x,))


# --------------------------------------------------------------------------------------------
# Pools
# --------------------------------------------------------------------------------------------
def test_flatten_unflatten_roundtrip_and_topk():
    """Row-major valid values; masked_topk keeps the k largest valid values, ties broken by
    position (earlier first), never padding (99 is padding here)."""
    x = torch.tensor([[0.1, 0.9, 0.5, 99.0], [0.7, 0.9, 99.0, 99.0]])
    mask = right_padded_mask([3, 2], 4)
    flat = flatten_valid(x, mask)
    assert torch.equal(flat, torch.tensor([0.1, 0.9, 0.5, 0.7, 0.9]))
    assert torch.equal(unflatten_valid(flat, mask), torch.where(mask, x, 0.0))
    top = masked_topk(x, mask, 1)  # tie 0.9 vs 0.9: the earlier position wins
    assert top.nonzero().tolist() == [[0, 1]]
    top3 = masked_topk(x, mask, 3)
    assert top3.nonzero().tolist() == [[0, 1], [1, 0], [1, 1]]
    with pytest.raises(ValueError):
        unflatten_valid(flat[:3], mask)


# --------------------------------------------------------------------------------------------
# Log-probs and entropy
# --------------------------------------------------------------------------------------------
def test_logprobs_hand():
    """logits [0, ln 2, ln 3] → softmax [1/6, 2/6, 3/6]: label 2 → ln ½, label 0 → ln ⅙.
    Temperature 2: softmax ∝ [1, √2, √3], label 0 → −ln(1 + √2 + √3). Label −100 → 0."""
    logits = torch.tensor([[[0.0, math.log(2), math.log(3)]] * 3])
    labels = torch.tensor([[2, 0, -100]])
    lp = logprobs_from_logits(logits, labels)
    assert torch.allclose(lp, torch.tensor([[math.log(0.5), math.log(1 / 6), 0.0]]), atol=1e-6)
    lp_t = logprobs_from_logits(logits, labels, temperature=2.0)
    assert lp_t[0, 1].item() == pytest.approx(-math.log(1 + math.sqrt(2) + math.sqrt(3)), rel=1e-6)


def test_logprobs_bf16_computed_in_float32_and_chunked(monkeypatch):
    """bf16 logits give float32 log-probs equal to log_softmax of the float32 upcast; forcing
    tiny chunks (2 rows) changes nothing, values or gradients."""
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(3, 5, 11, generator=g) * 4).to(torch.bfloat16)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    ref = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, labels[..., None]).squeeze(-1)
    out = logprobs_from_logits(logits, labels, temperature=0.7)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5)

    x = logits.float().requires_grad_()
    torch.log_softmax(x / 0.7, -1).gather(-1, labels[..., None]).sum().backward()
    monkeypatch.setattr(core, "_CHUNK_ELEMENTS", 22)  # 2 tokens of V = 11 per chunk
    y = logits.clone().requires_grad_()
    chunked = logprobs_from_logits(y, labels, temperature=0.7)
    chunked.sum().backward()
    assert torch.allclose(chunked, ref, atol=1e-5)
    assert y.grad.dtype == torch.bfloat16
    assert torch.allclose(y.grad.float(), x.grad, atol=1e-2)


def test_logprobs_and_entropy_of_non_contiguous_logits(monkeypatch):
    """The usual call slices the model output, ``logits[:, :-1]`` (non-contiguous); values and
    gradients equal the log_softmax reference, with chunks of 3 tokens (T = 5 is not a multiple)."""
    monkeypatch.setattr(core, "_CHUNK_ELEMENTS", 3 * 6)
    g = torch.Generator().manual_seed(9)
    full = torch.randn(2, 6, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 6, (2, 5), generator=g)
    x = full.clone().requires_grad_()
    sliced = x[:, :-1]
    assert not sliced.is_contiguous()
    out = logprobs_from_logits(sliced, labels)
    ent = token_entropy(sliced)
    (out.sum() + ent.sum()).backward()
    y = full.clone().requires_grad_()
    logp_all = torch.log_softmax(y[:, :-1], -1)
    ref = logp_all.gather(-1, labels[..., None]).squeeze(-1)
    ref_ent = -(logp_all.exp() * logp_all).sum(-1)
    (ref.sum() + ref_ent.sum()).backward()
    assert torch.allclose(out, ref) and torch.allclose(ent, ref_ent)
    assert torch.allclose(x.grad, y.grad)
    assert torch.equal(x.grad[:, -1], torch.zeros(2, 6, dtype=torch.float64))


def test_logprobs_gradcheck(monkeypatch):
    monkeypatch.setattr(core, "_CHUNK_ELEMENTS", 14)  # several chunks
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 6, -100], [0, 3, 3]])
    assert torch.autograd.gradcheck(lambda z: logprobs_from_logits(z, labels, 0.6), (logits,))


def test_entropy_hand():
    """Uniform over 4 → ln 4. p = [½, ¼, ¼] → H = ½ln2 + 2·¼·ln4 = 1.5·ln 2. Logits 2·ln p at
    temperature 2 give the same distribution. A near one-hot distribution → ≈ 0."""
    assert token_entropy(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4), rel=1e-6)
    p = torch.tensor([0.5, 0.25, 0.25])
    assert token_entropy(p.log().view(1, 1, 3)).item() == pytest.approx(1.5 * math.log(2), rel=1e-6)
    assert token_entropy((2 * p.log()).view(1, 1, 3), temperature=2.0).item() == pytest.approx(1.5 * math.log(2), rel=1e-6)
    assert token_entropy(torch.tensor([[[100.0, 0.0, 0.0]]])).item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_bf16_matches_float_reference(monkeypatch):
    monkeypatch.setattr(core, "_CHUNK_ELEMENTS", 9)
    g = torch.Generator().manual_seed(7)
    logits = (torch.randn(2, 4, 9, generator=g) * 3).to(torch.bfloat16)
    p = torch.softmax(logits.float(), -1)
    ref = -(p * torch.log_softmax(logits.float(), -1)).sum(-1)
    out = token_entropy(logits)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5)


def test_entropy_gradcheck(monkeypatch):
    monkeypatch.setattr(core, "_CHUNK_ELEMENTS", 10)
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: token_entropy(z, 1.7), (logits,))


def test_temperature_must_be_positive():
    with pytest.raises(ValueError):
        logprobs_from_logits(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), 0.0)
    with pytest.raises(ValueError):
        token_entropy(torch.zeros(1, 1, 2), -1.0)
