"""rltrain.algos.registry: lookup, one signature per registry, and the batch-pool protocol run
exactly as the training loops will run it."""
from __future__ import annotations

import math

import pytest
import torch

from rltrain.algos import registry
from rltrain.algos.core import AGGREGATION_MODES, aggregate, aggregate_counts, flatten_valid, unflatten_valid
from rltrain.algos.registry import get

from .conftest import right_padded_mask


def test_get_unknown_lists_valid_names():
    with pytest.raises(ValueError, match="cispo, clip, clip_cov, gmpo, gspo, kl_cov, sapo"):
        get("policy_loss", "ppo2")
    with pytest.raises(ValueError, match="all, high_entropy, prob_mask"):
        get("token_selection", "random")
    with pytest.raises(ValueError, match="grpo, reinforce_pp, reinforce_pp_baseline, rloo"):
        get("adv_estimator", "vtrace")
    with pytest.raises(ValueError, match="adv_estimator, policy_loss, token_selection"):
        get("losses", "clip")


def test_one_registry_per_kind_and_each_option_a_defaulted_keyword():
    """Every registered entry's options are keyword arguments with defaults (the config's), checked
    where the entry says; a registration without a default, or a second one of a name, is refused."""
    for kind in ("policy_loss", "token_selection"):
        for name, entry in registry.REGISTRIES[kind].items():
            assert set(entry.checks) <= set(registry.options(entry.fn)), (kind, name)

    def no_default(logp, old_logp, advantages, mask, *, tau, selected=None, generator=None):
        return logp, {}

    with pytest.raises(TypeError, match="option 'tau' needs a default"):
        registry.options(no_default)
    with pytest.raises(ValueError, match="policy_loss 'clip' is registered twice"):
        registry.register_policy_loss("clip")(no_default)


# --------------------------------------------------------------------------------------------
# Policy losses and token selectors through the one signature
# --------------------------------------------------------------------------------------------
POLICY_OPTIONS = {
    "clip": dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0),
    "clip_cov": dict(clip_low=0.2, clip_high=0.2, cov_low=-0.5, cov_high=3.0, select_ratio=0.1, scope="batch"),
    "kl_cov": dict(select_ratio=0.1, kl_coef=1.0, scope="batch"),
}
SELECTOR_OPTIONS = {
    "all": {},
    "high_entropy": dict(top_ratio=0.3, normalize="all", scope="batch"),
    "prob_mask": dict(threshold=0.5, normalize="selected"),
}


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = [7, 3, 5, 1, 6, 4]
    mask = right_padded_mask(lengths, 7)
    old = -torch.rand(6, 7, generator=g, dtype=torch.float64) * 2
    return dict(
        mask=mask,
        logp=old + 0.2 * torch.randn(6, 7, generator=g, dtype=torch.float64),
        old_logp=old,
        advantages=torch.randn(6, 7, generator=g, dtype=torch.float64),
        entropy=torch.rand(6, 7, generator=g, dtype=torch.float64),
    ), lengths


def _pool_selection(select_fn, tensors, parts, mask, **kwargs):
    """Steps 1–4 of the protocol: flatten per micro-batch, concatenate, select, slice back."""
    pool = {k: torch.cat([flatten_valid(v[p], mask[p]) for p in parts])[None] for k, v in tensors.items()}
    n_pool = next(iter(pool.values())).shape[1]
    pool_sel = select_fn(torch.ones(1, n_pool, dtype=torch.bool), pool, **kwargs)[0]
    out, offset = [], 0
    for p in parts:
        n = int(mask[p].sum())
        out.append(unflatten_valid(pool_sel[offset : offset + n], mask[p], fill=False))
        offset += n
    return out


def _step_loss(policy_name, selector_name, batch, lengths, parts, mode):
    """One optimizer step's loss as a loop computes it, with no branch on a name."""
    ploss, popts = get("policy_loss", policy_name), POLICY_OPTIONS[policy_name]
    selector, sopts = get("token_selection", selector_name), SELECTOR_OPTIONS[selector_name]
    mask = batch["mask"]
    logp = batch["logp"].clone().requires_grad_()
    p_sel = [None] * len(parts)
    if ploss.needs_pool(popts):
        p_sel = _pool_selection(
            lambda ones, pool, **kw: ploss.select(pool["logp"], pool["old_logp"], pool["advantages"], ones, **kw),
            {"logp": logp.detach(), "old_logp": batch["old_logp"], "advantages": batch["advantages"]},
            parts, mask, generator=torch.Generator().manual_seed(11), **popts,
        )
    s_sel = [None] * len(parts)
    if selector.needs_pool(sopts):
        s_sel = _pool_selection(lambda ones, pool, **kw: selector.select(ones, **pool, **kw),
                                {k: batch[k] for k in selector.requires}, parts, mask, **sopts)
    selections = [selector(mask[p], **{k: batch[k][p] for k in selector.requires}, selected=s, **sopts)
                  for p, s in zip(parts, s_sel)]
    counts = sum(aggregate_counts(sel.count_mask) for sel in selections)
    total, metrics = 0.0, []
    for p, sel, ps in zip(parts, selections, p_sel):
        width = max(max(lengths[i] for i in range(6)[p]), 1)  # each micro-batch trimmed to its width
        cols = slice(0, width)
        loss_mat, m = ploss(logp[p, cols], batch["old_logp"][p, cols], batch["advantages"][p, cols], mask[p, cols],
                            selected=None if ps is None else ps[:, cols], generator=torch.Generator().manual_seed(5),
                            **popts)
        metrics.append(m)
        total = total + aggregate(loss_mat.masked_fill(~sel.loss_mask[:, cols], 0), sel.count_mask[:, cols], mode,
                                  constant=10, num_tokens=counts[0], num_seqs=counts[1])
    total.backward()
    return total, logp.grad, metrics


@pytest.mark.parametrize("selector_name", sorted(SELECTOR_OPTIONS))
@pytest.mark.parametrize("policy_name", sorted(POLICY_OPTIONS))
def test_micro_batching_does_not_change_loss_or_gradient(policy_name, selector_name):
    """Every policy loss × token selector × aggregation mode, with batch-scope selections: the
    loss and gradient of 3 micro-batches equal those of the whole batch in one micro-batch."""
    batch, lengths = _batch()
    for mode in AGGREGATION_MODES:
        full, g_full, _ = _step_loss(policy_name, selector_name, batch, lengths, [slice(0, 6)], mode)
        split, g_split, metrics = _step_loss(policy_name, selector_name, batch, lengths,
                                             [slice(0, 2), slice(2, 3), slice(3, 6)], mode)
        assert split.item() == pytest.approx(full.item(), rel=1e-10, abs=1e-12), mode
        assert torch.allclose(g_split, g_full, atol=1e-12), mode
        assert g_full.abs().sum() > 0
        for m in metrics:
            assert all(v.dim() == 0 and not v.requires_grad for v in m.values())


def test_selections_actually_select():
    """Guard for the invariance test above: the pooled selections are non-trivial."""
    batch, lengths = _batch()
    mask = batch["mask"]
    sel = get("token_selection", "high_entropy")(mask, entropy=batch["entropy"], selected=None,
                                                 **{**SELECTOR_OPTIONS["high_entropy"], "scope": "micro_batch"})
    assert 0 < int(sel.loss_mask.sum()) < int(mask.sum())
    assert sel.count_mask.equal(mask)  # normalize="all"
    for name in ("clip_cov", "kl_cov"):
        spec = get("policy_loss", name)
        s = spec.select(batch["logp"], batch["old_logp"], batch["advantages"], mask,
                        generator=torch.Generator().manual_seed(11), **POLICY_OPTIONS[name])
        assert int(s.sum()) == max(1, math.floor(0.1 * int(mask.sum())))


def test_on_policy_metrics_for_every_loss():
    """ρ = 1 and approx-KL = 0 on-policy, through the registry signature, for every loss."""
    batch, _ = _batch()
    for name, opts in POLICY_OPTIONS.items():
        opts = {**opts, "scope": "micro_batch"} if "scope" in opts else opts
        loss, metrics = get("policy_loss", name)(batch["old_logp"], batch["old_logp"], batch["advantages"],
                                                 batch["mask"], generator=torch.Generator().manual_seed(0), **opts)
        assert loss.shape == batch["mask"].shape
        assert metrics["ratio_mean"].item() == pytest.approx(1.0)
        assert metrics["approx_kl"].item() == pytest.approx(0.0, abs=1e-12)


def test_scope_contract_is_enforced():
    batch, _ = _batch()
    args = (batch["logp"], batch["old_logp"], batch["advantages"], batch["mask"])
    with pytest.raises(ValueError, match="scope='batch' needs `selected`"):
        get("policy_loss", "kl_cov")(*args, **POLICY_OPTIONS["kl_cov"])
    with pytest.raises(ValueError, match="selects locally"):
        get("policy_loss", "kl_cov")(*args, selected=batch["mask"], **{**POLICY_OPTIONS["kl_cov"], "scope": "micro_batch"})
    with pytest.raises(ValueError, match="batch, micro_batch"):
        get("policy_loss", "clip_cov").needs_pool({**POLICY_OPTIONS["clip_cov"], "scope": "global"})
    with pytest.raises(ValueError, match="selects no tokens"):
        get("policy_loss", "clip")(*args, selected=batch["mask"], **POLICY_OPTIONS["clip"])
    with pytest.raises(ValueError, match="scope='batch' needs `selected`"):
        get("token_selection", "high_entropy")(batch["mask"], entropy=batch["entropy"], **SELECTOR_OPTIONS["high_entropy"])
    assert not get("policy_loss", "clip").needs_pool(POLICY_OPTIONS["clip"])
    assert not get("token_selection", "prob_mask").needs_pool(SELECTOR_OPTIONS["prob_mask"])


def test_prob_mask_selector_hand():
    """threshold 0.5 on p = [0.9, 0.3, 0.6, 0.1 (padding)]: keep token 1 only; normalize
    "selected" counts only it."""
    mask = right_padded_mask([3], 4)
    old = torch.tensor([[0.9, 0.3, 0.6, 0.1]]).log()
    sel = get("token_selection", "prob_mask")(mask, old_logp=old, threshold=0.5, normalize="selected")
    assert sel.loss_mask.tolist() == [[False, True, False, False]]
    assert sel.count_mask.equal(sel.loss_mask)
    assert get("token_selection", "prob_mask").requires == frozenset({"old_logp"})
