"""LoRA adapters through peft (``model.lora.r > 0``), merged into plain weights on export.

The adapters are injected into the HF model in place (``peft.inject_adapter_in_model``), so the
policy stays an ordinary ``*ForCausalLM`` for the rollout engine, the losses and DeepSpeed; only the
adapter matrices require gradients, so the optimizer (and its fp32 masters and ZeRO shards) holds
them alone. Checkpoints and exports hold the merged weights ``W + (α/r)·B·A`` under the base
model's own parameter names: a standard HF directory that loads without peft. The trainer state
keeps the adapter matrices themselves, so ``resume=auto`` continues training them.
"""
from __future__ import annotations

import torch

BASE, LORA_A, LORA_B = ".base_layer.", ".lora_A.default.", ".lora_B.default."


def apply_lora(model: torch.nn.Module, *, r: int, alpha: float, dropout: float, target_modules: list[str],
               seed: int = 0) -> torch.nn.Module:
    """Inject LoRA adapters (B = 0, so the model's outputs are unchanged) and freeze everything else."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = "all-linear" if list(target_modules) == ["all-linear"] else list(target_modules)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    if targets == "all-linear":  # inject_adapter_in_model wants names: every nn.Linear but the LM head
        head = model.get_output_embeddings()
        config.target_modules = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                                        if isinstance(m, torch.nn.Linear) and m is not head})
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the A matrices' init: the same on every rank
        model = inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_(LORA_A in name or LORA_B in name)
    model.rltrain_lora_scaling = alpha / r
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"model.lora.target_modules={list(target_modules)} matched no layer of the model")
    return model


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "rltrain_lora_scaling")


def merged_state_dict(sd: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A LoRA model's full state dict folded into the base model's names and shapes:
    ``x.base_layer.weight`` + scaling·``x.lora_B``·``x.lora_A`` → ``x.weight``."""
    out = {}
    for key, value in sd.items():
        if LORA_A in key or LORA_B in key:
            continue
        if BASE in key:
            prefix, leaf = key.split(BASE)
            if leaf == "weight" and f"{prefix}{LORA_A}weight" in sd:
                a, b = sd[f"{prefix}{LORA_A}weight"].float(), sd[f"{prefix}{LORA_B}weight"].float()
                value = value.float() + scaling * (b @ a)
            key = f"{prefix}.{leaf}"
        out[key] = value
    return out
