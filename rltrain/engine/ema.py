"""PPO's moving reference (Xu et al. 2024, trick 3): θ_ref ← η·θ_actor + (1 − η)·θ_ref after every
actor update, accumulated in fp32 (a bf16 EMA with η = 0.001 would round every update away).

Two holders with one interface (``update``, and the checkpoint methods of an actor: ``state_dict`` /
``load_state_dict`` for trainer.pt, ``save_shards`` / ``load_shards`` for per-rank files), chosen
by ``ema_reference``:

- ``FullEma``: the reference is a plain module (``deepspeed.stage`` < 3). Every rank keeps the whole
  fp32 reference and copies it into the module after each update; trainer.pt holds it.
- ``ShardedEma``: the reference is an inference-only ZeRO-3 engine and the actor a ZeRO-3
  ``DeepSpeedActor``. Both engines partition every parameter the same way (flattened, split evenly
  over the ranks), so each rank updates only its own slice: its fp32 reference partition moves
  towards the actor's fp32 master partition and is written into the reference's partition
  (``ds_tensor``). No communication, and per-rank memory stays 1/world of the model. The
  partitions are checkpointed per rank, so resuming needs the same number of ranks (as ZeRO does).
"""
from __future__ import annotations

from pathlib import Path

import torch


class FullEma:
    """fp32 reference weights on every rank, copied into the plain reference ``module``."""

    def __init__(self, module: torch.nn.Module, actor):
        self.module = module
        self.fp32 = {k: v.clone() for k, v in actor.full_state_dict().items()}  # the initial policy

    @torch.no_grad()
    def update(self, actor, eta: float) -> None:
        full = actor.full_state_dict()  # a collective under ZeRO-1/2: every rank calls update
        for k, v in self.fp32.items():
            v.mul_(1.0 - eta).add_(full[k].to(v.dtype), alpha=eta)
        self.module.load_state_dict(self.fp32)

    def state_dict(self) -> dict:
        return {"fp32": self.fp32}

    def load_state_dict(self, state: dict) -> None:
        if "fp32" not in state:
            raise RuntimeError("this checkpoint's moving reference is ZeRO-3 sharded; resume it with "
                               "deepspeed=zero3 and the same number of ranks")
        self.fp32 = state["fp32"]
        self.module.load_state_dict(self.fp32)

    def save_shards(self, directory: Path) -> None:
        """Nothing per rank: trainer.pt holds the whole reference."""

    def load_shards(self, directory: Path) -> None:
        """Counterpart of ``save_shards``; nothing."""


class ShardedEma:
    """This rank's fp32 partitions of a ZeRO-3 reference engine, aligned with the ZeRO-3 actor's."""

    def __init__(self, reference, actor, rank: int, world_size: int):
        from deepspeed.utils import safe_get_local_fp32_param

        self.rank, self.world_size = rank, world_size
        self._local_fp32 = safe_get_local_fp32_param
        self.ref_params = dict(reference.named_parameters())
        self.actor_params = {n: p for n, p in actor.module.named_parameters() if p.requires_grad}
        if set(self.actor_params) != set(self.ref_params):
            missing = sorted(set(self.ref_params) ^ set(self.actor_params))[:5]
            raise RuntimeError(f"the moving reference needs the actor's parameters one to one; differing: {missing}")
        # Starts at the actor's own fp32 masters: the initial policy (the loop builds this before resuming).
        self.fp32 = {n: self._local_fp32(p).detach().float().clone() for n, p in self.actor_params.items()}
        for n, v in self.fp32.items():
            if v.numel() != self.ref_params[n].ds_tensor.numel():
                raise RuntimeError(f"{n}: the reference's ZeRO-3 partition ({self.ref_params[n].ds_tensor.numel()}) "
                                   f"and the actor's ({v.numel()}) differ")

    @torch.no_grad()
    def update(self, actor, eta: float) -> None:
        for n, v in self.fp32.items():
            v.mul_(1.0 - eta).add_(self._local_fp32(self.actor_params[n]).float(), alpha=eta)
        self._write()

    def _write(self) -> None:
        """Copy the fp32 partitions into the reference engine's (compute-dtype) partitions."""
        for n, v in self.fp32.items():
            part = self.ref_params[n].ds_tensor
            part.data.copy_(v.view_as(part))

    def state_dict(self) -> dict:
        """What trainer.pt records: the layout the per-rank partitions were written with."""
        return {"sharded": True, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("world_size") != self.world_size:
            raise RuntimeError(f"this checkpoint's moving reference was saved by {state.get('world_size')} "
                               f"ZeRO-3 ranks (unsharded if None); resume it with that layout (now: "
                               f"{self.world_size} ranks)")

    def save_shards(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.fp32, directory / f"rank{self.rank:05d}.pt")

    def load_shards(self, directory: Path) -> None:
        saved = torch.load(directory / f"rank{self.rank:05d}.pt", map_location="cpu")
        for n, v in self.fp32.items():
            v.copy_(saved[n])
        self._write()


def ema_reference(reference, actor, *, stage: int, rank: int, world_size: int):
    """The holder for ``reference`` (from ``loops.setup.build_reference``) and ``actor``."""
    if stage == 3:
        return ShardedEma(reference, actor, rank, world_size)
    return FullEma(reference, actor)
