"""The PPO critic: a causal-LM backbone (no LM head) with a scalar value head.

By default the backbone is a fresh copy of the policy's (SPO/VinePPO initialise the critic from
the SFT backbone); ``critic_path`` loads another one (ReaLHF starts from the reward model): any HF
directory or hub id that ``AutoModel`` reads, and a ``value_head.pt`` next to its config, if
present, restores the head too (``save_critic`` writes exactly that layout).

The head starts at zero, so every value is 0 before the critic has learned anything, and it runs
in fp32 whatever the backbone's compute dtype: values feed GAE and bf16 would round them to
three significant digits.

Alignment (rltrain.algos.ppo): for a packed batch whose responses start at column P
(``rltrain.rollout.forward.pack``), V(s_t), the value of prompt + y_<t, is read at column P − 1 + t;
asking for the last T + 1 positions gives V(s_0) … V(s_T), the last one being the value after the
final response token, which bootstraps truncated responses.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

VALUE_HEAD_FILE = "value_head.pt"


class ValueModel(nn.Module):
    """``backbone`` (a transformers base model returning ``last_hidden_state``) + ``Linear(H, 1)``."""

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, position_ids, values_to_keep: int) -> torch.Tensor:
        """Values ``[B, values_to_keep]`` (fp32) of the last ``values_to_keep`` positions."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state[:, -values_to_keep:]  # [B, K, H]
        w, b = self.value_head.weight, self.value_head.bias
        return F.linear(hidden.float(), w.float(), b.float()).squeeze(-1)  # [B, K]

    def gradient_checkpointing_enable(self) -> None:
        self.backbone.gradient_checkpointing_enable()


def backbone_of(causal_lm: nn.Module) -> nn.Module:
    """The base model inside a ``*ForCausalLM`` (e.g. ``LlamaForCausalLM.model``)."""
    return getattr(causal_lm, causal_lm.base_model_prefix)


def critic_from_policy(causal_lm: nn.Module) -> ValueModel:
    """A critic on the policy's backbone (pass a freshly loaded copy: the module is taken over)."""
    return ValueModel(backbone_of(causal_lm), causal_lm.config.hidden_size)


def load_critic(path: str) -> ValueModel:
    """A critic from an HF directory or hub id (and its ``value_head.pt`` when there is one)."""
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(path, dtype=torch.float32)
    critic = ValueModel(backbone, backbone.config.hidden_size)
    head = Path(path) / VALUE_HEAD_FILE
    if head.exists():
        critic.value_head.load_state_dict(torch.load(head, map_location="cpu"))
    return critic


def save_critic(critic: ValueModel, out_dir: str | Path, state_dict: dict | None = None) -> None:
    """Write ``out_dir`` so that ``load_critic(out_dir)`` restores the critic (fp32)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else critic.state_dict()
    sd = {k: v.detach().float() for k, v in sd.items()}
    critic.backbone.save_pretrained(out_dir, state_dict={k[len("backbone."):]: v for k, v in sd.items()
                                                         if k.startswith("backbone.")}, safe_serialization=True)
    torch.save({k[len("value_head."):]: v for k, v in sd.items() if k.startswith("value_head.")},
               out_dir / VALUE_HEAD_FILE)
