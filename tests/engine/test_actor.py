"""LocalActor in bf16: fp32 masters for the optimizer, and a full state dict (what checkpoints and
exports write) that gives every name of a tied parameter its fp32 master."""
from __future__ import annotations

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
