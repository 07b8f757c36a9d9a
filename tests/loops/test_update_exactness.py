"""The update's shortcuts change no gradient: a prompt shared by several rows encoded once, and
rows whose advantages are all zero left out of the forward and backward."""

import pytest
import torch

from rltrain.cli import compose_or_explain, to_run_config
from rltrain.config import register_configs
from rltrain.loops import pg
from rltrain.rollout.forward import pack, response_logits
from tests.rollout.conftest import BOS, PAD, _tokenizer


def _tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=PAD)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).float()


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_shared_prompt_forward_equals_packed_forward():
    model = _tiny()
    g = torch.Generator().manual_seed(1)
    prompts = [[BOS, 40, 41, 42, 43], [BOS, 50], [BOS, 60, 61, 62, 63, 64, 65]]
    rows = [prompts[i] for i in (0, 0, 1, 0, 2, 2, 1)]  # groups interleaved, uneven sizes
    resp = torch.randint(3, 90, (len(rows), 6), generator=g)
    weights = torch.randn(len(rows), 6, generator=g)
    out = {}
    for share in (False, True):
        model.zero_grad(set_to_none=True)
        if share:
            logits = response_logits(model, rows, resp, pad_id=PAD)
        else:  # one packed forward of every row's prompt + response
            ids, attn, pos = pack(rows, resp, PAD)
            logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -7:-1]
        lp = torch.log_softmax(logits.float(), -1).gather(2, resp[..., None]).squeeze(-1)
        (lp * weights).sum().backward()
        out[share] = (logits.detach(), _grads(model).clone())
    assert out[True][0].shape == (len(rows), 6, model.config.vocab_size)
    torch.testing.assert_close(out[True][0], out[False][0], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[True][1], out[False][1], atol=1e-5, rtol=1e-4)


class _Actor:
    """LocalActor-like: plain AdamW (with weight decay) over an fp32 module."""

    def __init__(self, module):
        self.module = module
        self.opt = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=0.1)
        self.lr = 1e-2
        self.collective = None  # one process: no pass is a collective

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return 0.0


def _cfg(**over):
    register_configs()
    base = ["model=tiny", "train.prompts_per_step=4", "train.samples_per_prompt=2", "train.micro_batch_size=2"]
    return to_run_config(compose_or_explain(base + [f"{k}={v}" for k, v in over.items()]))


@pytest.mark.parametrize("zero_groups", [(0, 2), (0, 1, 2, 3)])
def test_skipping_zero_advantage_rows_changes_no_parameter(monkeypatch, zero_groups):
    from rltrain.engine.dist import Dist

    cfg = _cfg()
    g = torch.Generator().manual_seed(2)
    prompts = [[BOS, 40 + i, 41] for i in range(4)]
    rows = [p for p in prompts for _ in range(2)]
    resp = torch.randint(3, 90, (8, 5), generator=g)
    mask = torch.ones(8, 5)
    mask[3, 3:] = 0
    adv = torch.randn(8, generator=g)[:, None].expand(8, 5).clone()
    for grp in zero_groups:
        adv[2 * grp:2 * grp + 2] = 0.0
    first = pg.PGBatch(rows, resp, mask, torch.randn(8, 5, generator=g) * mask)
    second = pg.PGBatch(rows, resp, mask, adv * mask)
    results = []
    for skip in (False, True):
        model = _tiny()
        actor = _Actor(model)
        # Two steps so AdamW's moments from step 1 move the parameters in step 2 even when every
        # advantage is zero: skipping must still give every parameter a (zero) gradient.
        for step, b in enumerate((first, second)):
            if not skip:
                monkeypatch.setattr(pg.PolicyUpdate, "skippable_rows", lambda *a, **k: torch.zeros(8, dtype=torch.bool))
            metrics = pg.PolicyUpdate(cfg).run(actor, b, Dist(), pad_id=PAD, step=step,
                                       generator=torch.Generator().manual_seed(0))
            monkeypatch.undo()
        results.append((torch.cat([p.detach().flatten() for p in model.parameters()]), metrics))
    (p0, m0), (p1, m1) = results
    torch.testing.assert_close(p1, p0, atol=1e-6, rtol=1e-5)
    # A rank whose rows were all skipped logs only the names it has values for; Metrics.reduce
    # agrees on the union of names across ranks (tests/test_distributed.py runs uneven ranks).
    # (Entropy statistics are gathered, not reduced by name: with no trained token they are absent.)
    named = lambda m: {k for k in m if not k.startswith("actor/entropy")}  # noqa: E731
    assert named(m1) <= named(m0)
    assert m1["actor/skipped_rows_frac"] == pytest.approx(len(zero_groups) / 4)
    assert m0["actor/skipped_rows_frac"] == 0.0
    torch.testing.assert_close(torch.tensor(m1["actor/pg_loss"]), torch.tensor(m0["actor/pg_loss"]),
                               atol=1e-6, rtol=1e-4)


def test_rows_are_not_skipped_when_the_loss_does_not_vanish():
    batch = pg.PGBatch([[1]] * 2, torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3), torch.zeros(2, 3))
    assert pg.PolicyUpdate(_cfg()).skippable_rows(batch, torch.ones(2, 3, dtype=torch.bool)).all()
    for over in ({"policy_loss": "kl_cov"}, {"algo.entropy_coef": 0.01}):
        cfg = _cfg(**over)
        assert not pg.PolicyUpdate(cfg).skippable_rows(batch, torch.ones(2, 3, dtype=torch.bool)).any(), over
    early_stop = pg.PolicyUpdate(_cfg(), early_stop_ratio=2.0)
    assert not early_stop.skippable_rows(batch, torch.ones(2, 3, dtype=torch.bool)).any()
    with_kl = pg.PGBatch([[1]] * 2, torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3), torch.zeros(2, 3),
                         ref_logp=torch.zeros(2, 3))
    assert not pg.PolicyUpdate(_cfg()).skippable_rows(with_kl, torch.ones(2, 3, dtype=torch.bool)).any()


def test_clip_cov_warns_once_when_its_ratio_selects_a_handful_of_tokens(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="rltrain.loops.pg"):
        update = pg.PolicyUpdate(_cfg(policy_loss="clip_cov"))
        update._warn_small_selection(2000)   # selects 1 token: warned
        update._warn_small_selection(2000)   # once per run (per PolicyUpdate)
        pg.PolicyUpdate(_cfg(policy_loss="kl_cov"))._warn_small_selection(100_000)  # 20 tokens: fine
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "select_ratio=0.0002" in warnings[0] and "selects 1 token" in warnings[0]


def test_length_grouped_micro_batches_cover_each_row_once_and_cut_padding():
    # group 0: one rambling row (64) among short ones; group 1: all short
    prompts = [[BOS] + [40] * 50, [BOS] + [50] * 50]
    rows = [prompts[0]] * 4 + [prompts[1]] * 4
    lens = torch.tensor([64, 5, 6, 5, 7, 6, 5, 64])
    keep = torch.arange(8)
    chunks = pg._by_length(keep, lens, rows, 4)
    assert sorted(torch.cat(chunks).tolist()) == list(range(8))
    assert all(len(c) <= 4 for c in chunks)
    cost = lambda ch: sum(pg._forward_tokens([rows[i] for i in c], int(lens[c].max())) for c in ch)  # noqa: E731
    in_order = [keep[:4], keep[4:]]
    # all rows by length: [64, 64, 7, 6] and [6, 5, 5, 5], two prompts each: 2×51 + 4×64 + 2×51 + 4×6
    assert cost(chunks) == 484 < cost(in_order) == 2 * (51 + 4 * 64)


class _GradActor(_Actor):
    """Records the summed gradient at the optimizer step instead of stepping (Adam would magnify
    float-order noise in near-zero gradients into lr-sized moves)."""

    def step(self):
        self.grad = _grads(self.module).clone()
        self.opt.zero_grad(set_to_none=True)
        return 0.0


def test_length_grouped_micro_batches_change_no_gradient(monkeypatch):
    """The same update with micro-batches in row order and grouped by length: same gradient."""
    from rltrain.engine.dist import Dist

    cfg = _cfg()
    g = torch.Generator().manual_seed(3)
    prompts = [[BOS, 40 + i, 41] for i in range(4)]
    rows = [p for p in prompts for _ in range(2)]
    resp = torch.randint(3, 90, (8, 7), generator=g)
    mask = torch.ones(8, 7)
    for i, n in enumerate((7, 1, 2, 1, 7, 2, 1, 1)):  # long rows in different groups: the orders differ
        mask[i, n:] = 0
    batch = pg.PGBatch(rows, resp, mask, torch.randn(8, 7, generator=g) * mask)
    assert pg._by_length(torch.arange(8), mask.sum(1), rows, 2)[0].tolist() != [0, 1]
    grads = []
    for grouped in (False, True):
        if not grouped:
            monkeypatch.setattr(pg, "_by_length", lambda keep, lens, p, size: [keep[s:s + size]
                                                                               for s in range(0, len(keep), size)])
        actor = _GradActor(_tiny())
        pg.PolicyUpdate(cfg).run(actor, batch, Dist(), pad_id=PAD, step=0, generator=torch.Generator().manual_seed(0))
        monkeypatch.undo()
        grads.append(actor.grad)
    assert grads[0].abs().max() > 1e-3
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_logged_entropy_covers_every_response_token_when_the_loss_takes_a_subset():
    """SPO's probability mask with the kept-token denominator hands the update a loss mask that
    drops confident (low-entropy) tokens; ``actor/entropy`` must still be the mean over all response
    tokens, as for GRPO, so entropy curves of different algorithms compare."""
    from rltrain.engine.dist import Dist

    cfg = _cfg()
    g = torch.Generator().manual_seed(3)
    rows = [[BOS, 40 + i, 41] for i in range(4)]
    resp = torch.randint(3, 90, (4, 5), generator=g)
    valid = torch.ones(4, 5)
    valid[1, 3:] = 0
    kept = valid.clone()
    kept[:, :2] = 0  # the loss's subset
    ent = torch.rand(4, 5, generator=g)
    ent[:, :2] = 0.0  # the dropped tokens are the confident ones
    batch = pg.PGBatch(rows, resp, kept, torch.randn(4, 5, generator=g) * kept, old_logp=torch.zeros(4, 5),
                       old_entropy=ent, log_mask=valid)
    metrics = pg.PolicyUpdate(cfg).run(_Actor(_tiny()), batch, Dist(), pad_id=PAD, step=0,
                               generator=torch.Generator().manual_seed(0))
    assert metrics["actor/entropy"] == pytest.approx(ent[valid.bool()].mean().item(), rel=1e-6)
    assert metrics["actor/entropy"] < ent[kept.bool()].mean().item()
