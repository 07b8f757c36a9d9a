"""The actor (and PPO's critic, and the reference) as DeepSpeed ZeRO engines, behind ``LocalActor``'s
interface.

``DeepSpeedActor`` gives the loops the same five things as ``LocalActor``: ``module`` (forward /
generate), ``backward(loss)`` per micro-batch, ``step()`` once per minibatch, ``lr``, and the
checkpoint hooks. How DeepSpeed is configured, and why:

- ZeRO stage 1/2/3 from ``deepspeed.stage``; ``offload_optimizer`` / ``offload_params`` move the
  optimizer state (and under stage 3 the parameters) to CPU memory, with ``DeepSpeedCPUAdam``.
- ``model.dtype=bf16``: DeepSpeed's bf16 mode (bf16 module and gradients, fp32 master partitions
  in the ZeRO optimizer). ``fp32``: everything fp32.
- The optimizer is AdamW with the loop's settings (torch's fused kernel, or DeepSpeedCPUAdam in
  AdamW mode when offloaded) and our LR schedule (``rltrain.engine.actor.lr_lambda``), stepped by the engine.
- Gradient accumulation is *unmanaged* (``managed_gradient_accumulation: false``): ``backward``
  only accumulates, and ``step()`` is the boundary that reduces, clips and updates. The loop may
  call backward any number of times per minibatch (the last micro-batch may be smaller), exactly
  as with ``LocalActor``.
- Loss scale: each rank's loss is already divided by *global* token counts, so the sum of the
  ranks' gradients is the full gradient. DeepSpeed averages gradients over ranks, hence
  ``backward`` multiplies the loss by the world size (and never divides by accumulation steps).
- Gradient clipping: DeepSpeed's, at ``train.max_grad_norm``; ``step()`` returns the pre-clip
  global norm like ``torch.nn.utils.clip_grad_norm_``.

Forward passes with gradients go through the engine (it arms ZeRO's gradient hooks for the
following ``backward``); forwards without gradients (rollout, log-prob passes, the reference) call
the model directly, which under ZeRO-3 gathers each layer's parameters on the fly. For rollout,
``gathered()`` gathers all parameters once and keeps them resident until the block ends, so
decoding a response does not re-gather the model at every token.

Checkpoints: the fp32 weights are gathered for the HF policy (``full_state_dict``); the ZeRO
optimizer shards are written by every rank with DeepSpeed's own ``save_checkpoint`` into the
checkpoint's staging directory (``save_shards``), so resuming needs the same number of ranks.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import torch

from rltrain.engine.actor import OptimConfig, lr_lambda
from rltrain.engine.dist import Dist
from rltrain.engine.model import resolve_dtype

SHARD_TAG = "zero"
"""Sub-directory (DeepSpeed "tag") of a checkpoint's ``actor/`` folder that holds the ZeRO shards."""

# A marker put into every parameter's ``ds_active_sub_modules`` while ``gathered()`` is open: ZeRO-3
# releases a gathered parameter after a module's forward only when no module still uses it.
_HOLD = -7_000_001


def _quiet_deepspeed() -> None:
    """DeepSpeed logs its whole config at INFO, and calls collectives torch has deprecated."""
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning,
                            message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated")


def ensure_process_group(dist: Dist) -> None:
    """DeepSpeed needs a process group (and LOCAL_RANK) even for one process: make a single-rank
    gloo group when there is none."""
    import torch.distributed as tdist

    os.environ.setdefault("LOCAL_RANK", str(dist.local_rank))
    if not tdist.is_initialized():
        tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)


def ds_config(*, stage: int, dtype: str, world_size: int, max_grad_norm: float = 0.0,
              offload_optimizer: bool = False, offload_params: bool = False, train: bool = True) -> dict:
    """The DeepSpeed config dict for one engine.

    DeepSpeed's batch bookkeeping (micro batch 1, no managed accumulation) is nominal: the loop owns
    micro-batching and calls ``step()`` at the end of each minibatch.
    """
    zero: dict = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}
    if stage == 3:
        # Parameters under 1e5 elements are otherwise kept whole on every rank; partition everything
        # so that per-rank memory follows 1/world (and tiny test models are really sharded).
        zero["stage3_param_persistence_threshold"] = 0
        if offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if offload_optimizer and train:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    cfg = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bf16"},
        "zero_allow_untested_optimizer": True,
    }
    if train:
        cfg.update(managed_gradient_accumulation=False, gradient_clipping=float(max_grad_norm))
    return cfg


class EngineModule:
    """The HF model as the loops see it.

    Attribute access (``config``, ``generation_config``, ``eval()``, ``save_pretrained`` ...) and
    calls without gradients go to the model itself; a call with gradients enabled goes through the
    DeepSpeed engine's ``forward``, which prepares ZeRO's gradient reduction for ``backward``.
    """

    def __init__(self, engine, dist: Dist | None = None):
        object.__setattr__(self, "_engine", engine)
        object.__setattr__(self, "_dist", dist)
        object.__setattr__(self, "_held", False)

    @property
    def collective(self) -> Dist | None:
        """The ranks that must call this module in lockstep (``rltrain.rollout.forward``): ZeRO-3 on
        several ranks gathers each layer's parameters in every forward. None while ``gathered()``
        keeps the parameters resident (forwards are then local) and below stage 3."""
        d = self._dist
        zero3 = self._engine.zero_optimization_stage() == 3
        return d if d is not None and d.enabled and zero3 and not self._held else None

    def __call__(self, *args, **kwargs):
        if torch.is_grad_enabled():
            return self._engine(*args, **kwargs)
        return self._engine.module(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._engine.module, name)

    def __setattr__(self, name, value):
        setattr(self._engine.module, name, value)

    def __deepcopy__(self, memo):
        raise TypeError("the module of a DeepSpeed actor cannot be copied (its parameters are ZeRO-managed); "
                        "build a reference model with rltrain.loops.setup.build_reference(cfg, dist)")

    def __repr__(self) -> str:
        return f"EngineModule({self._engine.module.__class__.__name__}, zero={self._engine.zero_optimization_stage()})"


@contextlib.contextmanager
def _gathered(module: torch.nn.Module, wrapper: EngineModule):
    """All ZeRO-3 parameters of ``module`` gathered once and kept until the block ends (its
    ``wrapper``'s forwards are then local, not collective)."""
    import deepspeed

    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        for p in params:
            p.ds_active_sub_modules.add(_HOLD)
        object.__setattr__(wrapper, "_held", True)
        try:
            yield
        finally:
            object.__setattr__(wrapper, "_held", False)
            for p in params:
                p.ds_active_sub_modules.discard(_HOLD)


class DeepSpeedActor:
    """A policy trained by a DeepSpeed ZeRO engine (stage 1, 2 or 3, optionally offloaded).

    Args:
        model: the fp32 HF model (every rank loads the same weights).
        optim: optimizer and schedule settings.
        cfg: the run config (``deepspeed.*`` and ``model.dtype`` are read here, once).
        dist: this process's rank and world.
    """

    def __init__(self, model: torch.nn.Module, optim: OptimConfig, *, cfg, dist: Dist):
        import deepspeed

        _quiet_deepspeed()
        ensure_process_group(dist)
        ds = cfg.deepspeed
        self.dist, self.stage, self.optim_cfg = dist, ds.stage, optim
        model = model.float()
        params = [p for p in model.parameters() if p.requires_grad]
        if ds.offload_optimizer:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(params, lr=optim.lr, betas=tuple(optim.betas),
                                         weight_decay=optim.weight_decay, adamw_mode=True)
        else:  # fused: one kernel over the flat fp32 partition, no full-size temporaries
            optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas),
                                          weight_decay=optim.weight_decay, fused=True)
        # Built on the client optimizer: ZeRO keeps its param_group dicts, so the lr lands there.
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_lambda(s, warmup_steps=optim.warmup_steps, schedule=optim.schedule,
                                           total_steps=optim.total_steps))
        config = ds_config(stage=ds.stage, dtype=resolve_dtype(cfg.model.dtype), world_size=dist.world_size,
                           max_grad_norm=optim.max_grad_norm, offload_optimizer=ds.offload_optimizer,
                           offload_params=ds.offload_params)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config, dist_init_required=False)
        self.module = EngineModule(self.engine, dist)

    # ------------------------------------------------------------------ training

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of ``loss`` (this rank's share of a globally normalised loss)."""
        # DeepSpeed averages gradients over ranks; our per-rank losses are meant to be summed.
        self.engine.backward(loss * self.dist.world_size, scale_wrt_gas=False)

    def step(self) -> float:
        """Reduce, clip and apply the accumulated gradients; returns the pre-clip global grad norm."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def gathered(self):
        """Context for a rollout phase: under ZeRO-3 all parameters are gathered once on entry and
        released on exit (no re-gathering per generated token); a no-op below stage 3."""
        if self.stage < 3:
            return contextlib.nullcontext()
        return _gathered(self.engine.module, self.module)

    @property
    def collective(self) -> Dist | None:
        """The ranks whose training passes (forward + backward) are collectives that must pair up:
        every DeepSpeed stage on several ranks reduces gradients in ``backward``."""
        return self.dist if self.dist.enabled else None

    # ------------------------------------------------------------------ checkpoints

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """fp32 weights by name (the HF state dict, tied weights included), gathered from the ZeRO
        partitions. A collective: every rank must call it; every rank gets the full dict."""
        from deepspeed.utils import safe_get_full_fp32_param

        module = self.engine.module
        full: dict[int, torch.Tensor] = {}
        for _, p in module.named_parameters():  # unique parameters, the same order on every rank
            w = safe_get_full_fp32_param(p) if p.requires_grad else None
            if w is None:  # frozen parameter: no fp32 master, gather the module copy
                with _gathered_if_zero3(p):
                    w = p.detach()
            full[id(p)] = w.detach().float().cpu().clone()
        by_name = dict(module.named_parameters(remove_duplicate=False))
        sd = {}
        for name, value in module.state_dict().items():
            sd[name] = full[id(by_name[name])] if name in by_name else value.detach().float().cpu()
        return sd

    def state_dict(self) -> dict:
        """What ``trainer.pt`` records about the actor: the layout the shards were written with."""
        return {"deepspeed_stage": self.stage, "world_size": self.dist.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Check that the checkpoint's shards fit this engine (they are loaded by ``load_shards``)."""
        if "deepspeed_stage" not in state:
            raise RuntimeError("this checkpoint was written without DeepSpeed (deepspeed=none); resume it with "
                               "deepspeed=none, or start a new run from its exported policy (rltrain-export)")
        if state["world_size"] != self.dist.world_size or state["deepspeed_stage"] != self.stage:
            raise RuntimeError(
                f"this checkpoint holds ZeRO-{state['deepspeed_stage']} shards of {state['world_size']} ranks; "
                f"resume it with deepspeed stage {state['deepspeed_stage']} and {state['world_size']} ranks "
                f"(now: stage {self.stage}, {self.dist.world_size} ranks), "
                "or start a new run from its exported policy (rltrain-export)")

    def save_shards(self, directory: Path) -> None:
        """Every rank writes its ZeRO partition (fp32 masters, optimizer, scheduler) under directory."""
        self.engine.save_checkpoint(str(directory), tag=SHARD_TAG, save_latest=False)

    def load_shards(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(directory), tag=SHARD_TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed shards under {directory}/{SHARD_TAG}")


def _gathered_if_zero3(p: torch.nn.Parameter):
    if hasattr(p, "ds_id"):
        import deepspeed

        return deepspeed.zero.GatheredParameters([p])
    return contextlib.nullcontext()


def reference_engine(model: torch.nn.Module, *, cfg, dist: Dist) -> EngineModule:
    """The frozen reference as an inference-only ZeRO-3 engine (parameters sharded over ranks,
    gathered layer by layer in each forward). Returns the module to call for log-probs."""
    import deepspeed

    _quiet_deepspeed()
    ensure_process_group(dist)
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    config = ds_config(stage=3, dtype=resolve_dtype(cfg.model.dtype), world_size=dist.world_size,
                       offload_params=cfg.deepspeed.offload_params, train=False)
    engine, *_ = deepspeed.initialize(model=model, config=config, dist_init_required=False)
    engine.eval()
    return EngineModule(engine, dist)
