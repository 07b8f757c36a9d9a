"""Process-group context and the few collectives the loops need (sums and gathers of batch-wide
statistics). With one process every function is the identity, so the loops read the same either
way and results do not depend on the number of ranks.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce sum (returns a new tensor; float64 stays float64)."""
        if not self.enabled:
            return t
        t = t.clone()
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t

    def max(self, t: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return t
        t = t.clone()
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return t

    def gather_cat(self, flat: torch.Tensor) -> torch.Tensor:
        """Concatenate 1-D tensors of possibly different lengths from every rank (rank order)."""
        if not self.enabled:
            return flat
        n = torch.tensor([flat.numel()], dtype=torch.long)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        tdist.all_gather(sizes, n)
        width = int(max(s.item() for s in sizes))
        padded = torch.zeros(width, dtype=flat.dtype)
        padded[: flat.numel()] = flat
        out = [torch.zeros_like(padded) for _ in range(self.world_size)]
        tdist.all_gather(out, padded)
        return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes)])

    def close(self) -> None:
        """Leave the process group cleanly once every rank is done: without it, the collective
        backends' threads are torn down at interpreter exit in no fixed order, and a worker that
        finished its run could still abort ("terminate called without an active exception")."""
        if self.enabled and tdist.is_initialized():
            tdist.barrier()
            tdist.destroy_process_group()

    def gather_objects(self, obj) -> list:
        """Every rank's picklable ``obj``, in rank order (``[obj]`` with one process)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        if not self.enabled:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()


def init_dist(rank: int, world_size: int, *, master_addr: str, master_port: int, timeout_s: int) -> Dist:
    """Join the process group (gloo on CPU, nccl on GPU)."""
    if world_size == 1:
        return Dist()
    os.environ["MASTER_ADDR"] = master_addr
    os.environ["MASTER_PORT"] = str(master_port)
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    os.environ["LOCAL_RANK"] = str(local_rank)  # DeepSpeed reads it
    use_cuda = torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    tdist.init_process_group(backend, rank=rank, world_size=world_size,
                             timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
