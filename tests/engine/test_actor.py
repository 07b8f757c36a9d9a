"""LocalActor in bf16: fp32 masters for the optimizer, and a full state dict (what checkpoints and
exports write) that gives every name of a tied parameter its fp32 master."""
from __future__ import annotations

import io

import torch

from rltrain.engine.actor import LocalActor, OptimConfig
from rltrain.engine.model import load_model


def test_bf16_full_state_dict_writes_the_master_under_every_tied_name():
    model, tok = load_model("tiny", None, dtype="fp32", seed=0, hidden_size=64, num_layers=2)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    optim = OptimConfig(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, schedule="constant",
                        total_steps=1, max_grad_norm=1.0)
    actor = LocalActor(model, optim, dtype="bf16")
    ids = torch.tensor([tok("12+30=42").input_ids])
    actor.backward(actor.module(input_ids=ids, labels=ids).loss.float())
    actor.step()
    sd = actor.full_state_dict()
    embed, head = sd["model.embed_tokens.weight"], sd["lm_head.weight"]
    assert embed.dtype == torch.float32 and torch.equal(head, embed)
    # the fp32 master, which the bf16 compute copy only approximates
    assert not torch.equal(embed, actor.module.get_input_embeddings().weight.float())


def _tiny_actor():
    model, tok = load_model("tiny", None, dtype="fp32", seed=0, hidden_size=64, num_layers=2)
    optim = OptimConfig(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, schedule="constant",
                        total_steps=10, max_grad_norm=1.0)
    return LocalActor(model, optim, dtype="bf16"), torch.tensor([tok("12+30=42").input_ids])


def _train_step(actor, ids):
    actor.backward(actor.module(input_ids=ids, labels=ids).loss.float())
    actor.step()


def test_bf16_resume_rebuilds_the_same_stochastically_rounded_compute_copy():
    """A resumed bf16 run must hold the bf16 weights the uninterrupted run held (the stochastic
    rounding of the last step, not a round-to-nearest copy of the masters) and keep drawing the
    same rounding noise afterwards."""
    actor, ids = _tiny_actor()
    for _ in range(2):
        _train_step(actor, ids)
    buf = io.BytesIO()
    torch.save(actor.state_dict(), buf)  # as a checkpoint does: no tensor shared with the live actor
    buf.seek(0)
    saved = torch.load(buf)
    resumed, _ = _tiny_actor()
    resumed.load_state_dict(saved)
    for a, b in zip(actor.params, resumed.params):
        assert torch.equal(a, b)
    _train_step(actor, ids)
    _train_step(resumed, ids)
    for a, b in zip(actor.params, resumed.params):
        assert torch.equal(a, b)
    for a, b in zip(actor.master, resumed.master):
        assert torch.equal(a, b)
