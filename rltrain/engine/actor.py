"""The trainable model behind one interface, whether plain PyTorch or a DeepSpeed engine.

``LocalActor`` keeps the module in the compute dtype (``model.dtype``, see
``engine.model.choose_dtype``) and fp32 master copies of the parameters that the optimizer
updates; gradients accumulate in fp32 and the LM head computes in fp32 from the masters (see
``_mixed_precision_hooks``). After each optimizer step the masters are copied back into the compute
module. With ``dtype=fp32`` there are no copies.

The loop only calls ``module`` (forward / generate), ``gathered()`` (around rollout),
``backward(loss)``, ``step()`` and the checkpoint methods (``full_state_dict``, ``state_dict`` /
``load_state_dict``, ``save_shards`` / ``load_shards``); it never branches on the kind of actor
(``rltrain.engine.deepspeed.DeepSpeedActor`` is the other kind).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from rltrain.engine.model import DTYPES


@dataclass
class OptimConfig:
    """Plain optimiser settings (copied out of the run config at setup)."""

    lr: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_steps: int
    schedule: str  # constant | linear | cosine
    total_steps: int
    max_grad_norm: float


def lr_lambda(step: int, *, warmup_steps: int, schedule: str, total_steps: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {schedule!r}; valid: constant, linear, cosine")


def stochastic_round_bf16(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """fp32 → bf16 rounded stochastically: up with probability equal to the distance to the lower
    bf16 neighbour, so ``E[round(x)] = x`` (Gupta et al. 2015, arXiv:1502.02551; Zamirai et al.
    2020, arXiv:2010.06192 for bf16). Round-to-nearest drops every master update smaller than half
    a bf16 ulp from the compute copy (lr 4e-5 on weights ~0.05 whose ulp is 2.4e-4), so a few steps
    of small updates leave the compute model nearly unchanged; stochastic rounding moves it by the
    master's change in expectation. Adds 16 random low bits to the fp32 bit pattern, truncates.
    """
    bits = x.detach().float().contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, generator=generator, dtype=torch.int32).to(bits.device)
    finite = torch.isfinite(x)
    rounded = ((bits + noise) & -65536).view(torch.float32)  # -65536 = 0xFFFF0000 as int32
    return torch.where(finite, rounded, x.float()).to(torch.bfloat16)  # exact: low bits are 0


class LocalActor:
    """A model trained in one process, with fp32 master weights when computing in bf16."""

    def __init__(self, model: torch.nn.Module, optim: OptimConfig, *, dtype: str = "bf16", dist=None):
        self.dist = dist
        self.compute_dtype = DTYPES[dtype]
        self.optim_cfg = optim
        model = model.float()
        params = [p for p in model.parameters() if p.requires_grad]
        if self.compute_dtype == torch.float32:
            self.master = params
        else:
            self.master = [torch.nn.Parameter(p.detach().clone()) for p in params]
            model.to(self.compute_dtype)
        # fp32: the masters ARE the parameters (same list object, so ``step`` copies nothing).
        self.params = self.master if self.compute_dtype == torch.float32 else [
            p for p in model.parameters() if p.requires_grad]
        self.module = model
        if self.master is not self.params:
            self._mixed_precision_hooks(model)
        # Same seed on every rank: the compute copies stay identical across ranks.
        self._round_gen = torch.Generator().manual_seed(0x5EED)
        self._round_state = self._round_gen.get_state()
        self.optimizer = torch.optim.AdamW(
            self.master, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_lambda(s, warmup_steps=optim.warmup_steps, schedule=optim.schedule,
                                total_steps=optim.total_steps),
        )

    def _mixed_precision_hooks(self, model: torch.nn.Module) -> None:
        """bf16 compute, fp32 everything else (the mixed-precision recipe of Micikevicius et al.
        2018, arXiv:1710.03740, with bf16 instead of fp16 so no loss scaling):
        - gradients accumulate in fp32: each bf16 gradient is added into its master's fp32
          ``grad`` as soon as autograd has produced it (post-accumulate hook) and then dropped, so
          micro-batches sum in fp32 and no bf16 ``.grad`` outlives one backward;
        - the LM head (``engine.model.FP32Head``) multiplies by the fp32 master of its weight (the
          embedding matrix when tied), so logits are exact for the trained weights and the head's
          gradient lands in the master directly.
        """
        from rltrain.engine.model import set_fp32_head_weight

        master_of = {id(p): m for p, m in zip(self.params, self.master)}

        def to_master(p: torch.Tensor) -> None:
            m = master_of[id(p)]
            g = p.grad.float()
            m.grad = g if m.grad is None else m.grad.add_(g)
            p.grad = None

        for p in self.params:
            p.register_post_accumulate_grad_hook(to_master)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is not None and id(head.weight) in master_of:
            set_fp32_head_weight(model, master_of[id(head.weight)])

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        """Clip, update the fp32 masters, copy them into the compute module. Returns the grad norm."""
        if self.master is not self.params:  # gradients are already in the masters (hooks); stragglers too
            for m, p in zip(self.master, self.params):
                if p.grad is not None:
                    m.grad = p.grad.float() if m.grad is None else m.grad.add_(p.grad.float())
                    p.grad = None
        if self.dist is not None and self.dist.enabled:
            # Each rank's loss is already divided by global counts: the sum is the full gradient.
            for m in self.master:
                if m.grad is None:
                    m.grad = torch.zeros_like(m)
                m.grad = self.dist.sum(m.grad)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.master, self.optim_cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.master is not self.params:
            self._refresh_compute_copy()
        return float(grad_norm)

    def _refresh_compute_copy(self) -> None:
        """Round the masters into the compute module (stochastically into bf16). The generator's
        state before the rounding is kept so that a checkpoint can rebuild this exact copy."""
        self._round_state = self._round_gen.get_state()
        with torch.no_grad():
            for m, p in zip(self.master, self.params):
                if p.dtype == torch.bfloat16:
                    p.copy_(stochastic_round_bf16(m, self._round_gen))
                else:
                    p.copy_(m)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    @property
    def collective(self):
        """Ranks whose training passes must pair up (DeepSpeedActor); None: gradients are summed in
        ``step()``, so ranks may run different numbers of micro-batches."""
        return None

    def gathered(self):
        """Context for a rollout phase (DeepSpeedActor gathers ZeRO-3 parameters here); a no-op."""
        return contextlib.nullcontext()

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """fp32 weights by parameter name (for HF export), tied weights included."""
        sd = {k: v.detach().float() for k, v in self.module.state_dict().items()}
        master_of = {id(p): m for p, m in zip(self.params, self.master)}
        # every name of a parameter, tied ones included (lm_head = embed_tokens), gets its fp32 master
        for name, p in self.module.named_parameters(remove_duplicate=False):
            if id(p) in master_of:
                sd[name] = master_of[id(p)].detach()
        return sd

    def state_dict(self) -> dict:
        state = {
            "master": [m.detach() for m in self.master],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        if self.master is not self.params:  # the rounding that made the compute copy, to redo on load
            state["round_state"] = self._round_state
        return state

    def load_state_dict(self, state: dict) -> None:
        if "master" not in state:
            raise RuntimeError(f"this checkpoint holds DeepSpeed ZeRO-{state.get('deepspeed_stage')} shards of "
                               f"{state.get('world_size')} ranks; resume it with that deepspeed stage and rank count")
        with torch.no_grad():
            for m, saved in zip(self.master, state["master"]):
                m.copy_(saved)
        if self.master is not self.params:
            # the same stochastic rounding as the saved run's last step: the same bf16 weights, and
            # the generator continues where that run's did (resume is exact in bf16 too)
            if "round_state" in state:
                self._round_gen.set_state(state["round_state"])
            self._refresh_compute_copy()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def save_shards(self, directory) -> None:
        """Per-rank state outside trainer.pt (DeepSpeedActor's ZeRO shards); none here."""

    def load_shards(self, directory) -> None:
        """Counterpart of ``save_shards``; none here."""
