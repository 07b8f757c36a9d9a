"""Setup every loop shares, read from the typed config once: the policy (plain PyTorch or
DeepSpeed), the frozen reference, the reward, the data and its encoded prompts (``Context``)."""
from __future__ import annotations

import torch

from rltrain.config import RunConfig, option_kwargs
from rltrain.engine.actor import LocalActor, OptimConfig
from rltrain.engine.dist import Dist
from rltrain.engine.lora import apply_lora
from rltrain.engine.model import DTYPES, load_model, resolve_dtype
from rltrain.rewards import build_reward
from rltrain.types import Sample


def load_policy_model(cfg: RunConfig) -> tuple[torch.nn.Module, object]:
    """The configured policy model in fp32 and its tokenizer (the same weights on every rank)."""
    return load_model(cfg.model.name, cfg.model.path, dtype="fp32", seed=cfg.seed,
                      **({"hidden_size": cfg.model.tiny_hidden_size, "num_layers": cfg.model.tiny_layers}
                         if cfg.model.name == "tiny" else {}))


def build_actor(cfg: RunConfig, dist: Dist, total_optimizer_steps: int):
    """The trainable policy (plain PyTorch or DeepSpeed) and its tokenizer."""
    model, tok = load_policy_model(cfg)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    lora = cfg.model.lora
    if lora.r > 0:
        model = apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                           target_modules=list(lora.target_modules), seed=cfg.seed)
    t = cfg.train
    optim = OptimConfig(lr=t.lr, weight_decay=t.weight_decay, betas=tuple(t.betas), warmup_steps=t.warmup_steps,
                        schedule=t.lr_schedule, total_steps=total_optimizer_steps, max_grad_norm=t.max_grad_norm)
    if cfg.deepspeed.stage > 0:
        from rltrain.engine.deepspeed import DeepSpeedActor

        return DeepSpeedActor(model, optim, cfg=cfg, dist=dist), tok
    return LocalActor(model, optim, dtype=cfg.model.dtype, dist=dist), tok


def build_reference(cfg: RunConfig, dist: Dist):
    """The frozen reference policy (the initial weights), called like the actor's module for
    log-probs: an inference-only ZeRO-3 engine under ``deepspeed.stage=3`` (parameters sharded),
    otherwise a plain frozen module in the compute dtype."""
    return _frozen(load_policy_model(cfg)[0], cfg, dist)


def build_teacher(cfg: RunConfig, dist: Dist, student_tokenizer):
    """On-policy distillation's teacher (``algo.teacher_path``), frozen and sharded like the reference.
    Its tokenizer must be the student's: the advantage compares log-probs token by token."""
    from rltrain.engine.checkpoint import model_dir

    model, tok = load_model("hf", model_dir(cfg.algo.teacher_path), dtype="fp32")
    probe = "Teacher and student: 12 + 30 = 42."
    if tok.get_vocab() != student_tokenizer.get_vocab() or tok(probe).input_ids != student_tokenizer(probe).input_ids:
        raise ValueError(f"algo.teacher_path={cfg.algo.teacher_path!r}: the teacher's tokenizer differs from the "
                         "student's; on-policy distillation compares log-probs token by token, so both need one "
                         "vocabulary")
    return _frozen(model, cfg, dist)


def _frozen(model: torch.nn.Module, cfg: RunConfig, dist: Dist):
    if cfg.deepspeed.stage == 3:
        from rltrain.engine.deepspeed import reference_engine

        return reference_engine(model, cfg=cfg, dist=dist)
    model = model.to(DTYPES[resolve_dtype(cfg.model.dtype)]).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_data(cfg: RunConfig):
    from rltrain.data import build_dataset

    return build_dataset(cfg.data.name, **option_kwargs(cfg.data))


def build_reward_fn(cfg: RunConfig, dist: Dist | None = None):
    """The configured reward. Under ``deepspeed.stage=3`` with several ranks a generative judge
    (alone or inside ``reward=combined``) becomes an inference-only ZeRO-3 engine: its parameters
    are sharded across the ranks like the reference model's."""
    reward = build_reward(cfg.reward.name, **option_kwargs(cfg.reward))
    if dist is not None and dist.world_size > 1 and cfg.deepspeed.stage == 3:
        for judge in _judges(reward):
            shard_judge(judge, cfg, dist)
    return reward


def _judges(reward) -> list:
    from rltrain.rewards.judge import JudgeReward

    parts = [r for _, _, r in getattr(reward, "components", [])] or [reward]
    return [r for r in parts if isinstance(r, JudgeReward)]


def shard_judge(judge, cfg: RunConfig, dist: Dist) -> None:
    """Replace the judge's model by a ZeRO-3 inference engine (loaded now, on every rank)."""
    from rltrain.engine.deepspeed import reference_engine

    judge.model  # noqa: B018 - loads model and tokenizer
    judge._model = reference_engine(judge._model, cfg=cfg, dist=dist)
    judge.lockstep = dist


def encode_prompts(tokenizer, samples: list[Sample], cfg: RunConfig) -> list[list[int]]:
    from rltrain.data import render_prompt

    texts = [render_prompt(tokenizer, s.question, system_prompt=cfg.data.system_prompt,
                           use_chat_template=cfg.data.use_chat_template) for s in samples]
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]



class Context:
    """Everything a loop builds once at setup: actor + tokenizer, the reference (only when
    ``with_reference``), reward, train/test prompts and their token ids, the prompt order.
    ``prompts``: maps the dataset's items to what the loop samples from (DPO/PPO: pairs → prompts)."""

    def __init__(self, cfg: RunConfig, dist: Dist, *, total_optimizer_steps: int, with_reference: bool,
                 prompts=list):
        from rltrain.loops.episodes import PromptOrder

        self.actor, self.tok = build_actor(cfg, dist, total_optimizer_steps)
        self.pad = self.tok.pad_token_id
        # The initial policy, built only when something needs it (sharded under ZeRO-3).
        self.ref = build_reference(cfg, dist) if with_reference else None
        self.reward = build_reward_fn(cfg, dist)
        splits = build_data(cfg)
        self.splits = splits
        self.train, self.test = prompts(splits.train), prompts(splits.test[: cfg.eval.size])
        self.train_ids = encode_prompts(self.tok, self.train, cfg)
        self.test_ids = encode_prompts(self.tok, self.test, cfg)
        self.order = PromptOrder(len(self.train), cfg.seed)


def close(ctx) -> None:
    """End of a run: stop what its reward started (math-verify's worker pool, the code sandbox's
    workers) now, not in the interpreter's exit, where a process pool's exit hook can find its
    pipe already closed and print a traceback (seen on the default path under load)."""
    close_reward = getattr(getattr(ctx, "reward", None), "close", None)
    if close_reward is not None:
        close_reward()
