"""LoRA through peft (``model.lora.r``): only the adapters train, the injected model starts equal
to the base model, and checkpoints/exports hold the merged weights as a plain HF directory with
the training model's logits."""
from __future__ import annotations

import pytest
import torch

from rltrain.config import ConfigError, GRPOConfig, ModelConfig, RunConfig, validate
from rltrain.engine.dist import Dist
from rltrain.engine.lora import apply_lora, merged_state_dict
from rltrain.engine.model import load_model
from rltrain.loops import lifecycle, setup

from tests.engine.test_export import load_logits


def _tiny():
    return load_model("tiny", None, dtype="fp32", seed=0, hidden_size=64, num_layers=2)


def test_injected_model_starts_equal_and_only_adapters_train():
    base, tok = _tiny()
    ids = torch.tensor([tok("12+30=4").input_ids])
    with torch.no_grad():
        before = base(input_ids=ids).logits.clone()
    model = apply_lora(base, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(("q_proj" in n or "v_proj" in n) and "lora_" in n for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=0)  # B = 0 at init


def test_merged_state_dict_reproduces_the_adapted_model():
    model, tok = _tiny()
    model = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["all-linear"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # a trained adapter
    ids = torch.tensor([tok("7+8=15").input_ids])
    with torch.no_grad():
        want = model(input_ids=ids).logits
    plain, _ = _tiny()
    merged = merged_state_dict(model.state_dict(), scaling=8 / 4)
    missing, unexpected = plain.load_state_dict(merged, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embeddings
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
    # all-linear adapts every projection but not the LM head
    assert not any("lm_head" in k and "lora" in k for k in model.state_dict())


def test_lora_actor_trains_adapters_and_exports_merged_hf(tmp_path):
    cfg = RunConfig(algo=GRPOConfig(), model=ModelConfig(name="tiny", dtype="fp32"), run_dir=str(tmp_path))
    cfg.model.lora.r, cfg.model.lora.alpha = 4, 16
    dist = Dist()
    actor, tok = setup.build_actor(cfg, dist, total_optimizer_steps=2)
    init = {k: v.clone() for k, v in _tiny()[0].state_dict().items()}
    ids = torch.tensor([tok("12+30=42").input_ids])
    for _ in range(2):
        actor.backward(actor.module(input_ids=ids, labels=ids).loss)
        actor.step()
    with torch.no_grad():
        want = actor.module(input_ids=ids).logits
    lifecycle.save(cfg, dist, lifecycle.TrainState(step=2), actor, tok)
    policy = tmp_path / "checkpoints" / "step_000002" / "policy"
    torch.testing.assert_close(load_logits(policy, ids), want, rtol=1e-5, atol=1e-5)

    from safetensors.torch import load_file

    saved = load_file(str(policy / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in saved)
    changed = 0
    for k, w in saved.items():
        delta = w - init[k]
        if k.endswith("proj.weight"):
            changed += int(delta.abs().max() > 0)
            assert torch.linalg.matrix_rank(delta, atol=1e-6) <= 4, k  # a rank-r update
        else:
            assert torch.equal(w, init[k]), k  # embeddings and norms are frozen
    assert changed == 2 * 7  # every projection of both layers moved
    state = torch.load(tmp_path / "checkpoints" / "step_000002" / "trainer.pt", weights_only=False)
    assert len(state["actor"]["master"]) == 2 * 7 * 2  # the optimizer holds the adapters alone


def test_bad_lora_settings_are_named():
    cfg = RunConfig(algo=GRPOConfig(), model=ModelConfig(name="tiny"))
    cfg.model.lora.r = -1
    with pytest.raises(ConfigError, match="model.lora"):
        validate(cfg)
    cfg.model.lora.r, cfg.model.lora.target_modules = 4, ["no_such_proj"]
    with pytest.raises(ValueError, match="no_such_proj"):
        setup.build_actor(cfg, Dist(), total_optimizer_steps=1)
