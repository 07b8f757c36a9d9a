"""Setup every loop shares, read from the typed config once: the policy (plain PyTorch or
DeepSpeed), the frozen reference, PPO's critic, OPD's teacher, the reward, the data and its
encoded prompts or examples — all built by one ``Context``, whose options say what a loop needs."""
from __future__ import annotations

import contextlib

import torch

from rltrain.config import ConfigError, RunConfig, option_kwargs
from rltrain.engine.actor import LocalActor, OptimConfig
from rltrain.engine.critic import critic_from_policy, load_critic
from rltrain.engine.dist import Dist
from rltrain.engine.lora import apply_lora
from rltrain.engine.model import DTYPES, eos_token_ids, load_model, resolve_dtype
from rltrain.loops.episodes import PromptOrder
from rltrain.loops.pairs import encode_examples, pair_examples, prompt_samples, sft_examples
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
    return _trainable(model, cfg, dist, lr=cfg.train.lr, total_optimizer_steps=total_optimizer_steps), tok


def build_critic(cfg: RunConfig, dist: Dist, total_optimizer_steps: int):
    """PPO's critic as a trainable engine with its own optimizer (lr = ``algo.critic_lr``): a copy of
    the policy backbone with a zero value head, or the model at ``algo.critic_path``."""
    a = cfg.algo
    # A fresh load of the policy: fp32 weights, not the actor's bf16 compute copy.
    model = load_critic(a.critic_path) if a.critic_path else critic_from_policy(load_policy_model(cfg)[0])
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return _trainable(model, cfg, dist, lr=a.critic_lr, total_optimizer_steps=total_optimizer_steps)


def _trainable(model: torch.nn.Module, cfg: RunConfig, dist: Dist, *, lr: float, total_optimizer_steps: int):
    """``model`` with an AdamW optimizer and the ``train.*`` schedule: plain PyTorch or DeepSpeed."""
    t = cfg.train
    optim = OptimConfig(lr=lr, weight_decay=t.weight_decay, betas=tuple(t.betas), warmup_steps=t.warmup_steps,
                        schedule=t.lr_schedule, total_steps=total_optimizer_steps, max_grad_norm=t.max_grad_norm)
    if cfg.deepspeed.stage > 0:
        from rltrain.engine.deepspeed import DeepSpeedActor

        return DeepSpeedActor(model, optim, cfg=cfg, dist=dist)
    return LocalActor(model, optim, dtype=cfg.model.dtype, dist=dist)


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



DATA_KINDS = ("prompts", "examples", "pairs")


class Context:
    """Everything a loop builds once at setup (before resuming: references are the initial policy).

    Always: ``actor`` + ``tok`` (``pad``), ``reward``, the data ``splits``, the held-out prompts
    ``test`` (preference pairs as prompts) with their token ids ``test_ids``, and ``order`` over
    ``train``. What differs between loops is an option:

    Args:
        total_optimizer_steps: the learning-rate schedule's length (actor and critic).
        with_reference: build the frozen initial policy ``ref`` (sharded under ZeRO-3); else None.
        with_critic: build PPO's ``critic`` (``build_critic``); else None.
        with_teacher: build OPD's ``teacher`` (``build_teacher``); else None.
        data: what ``train`` holds —
            ``prompts``: ``Sample``s to generate from (preference pairs as prompts), with ``train_ids``;
            ``examples``: SFT's encoded (prompt, response) ``Encoded`` examples;
            ``pairs``: DPO's encoded (prompt, chosen, rejected) pairs, and the held-out ``test_pairs``.
    """

    def __init__(self, cfg: RunConfig, dist: Dist, *, total_optimizer_steps: int, with_reference: bool = False,
                 with_critic: bool = False, with_teacher: bool = False, data: str = "prompts"):
        if data not in DATA_KINDS:
            raise ValueError(f"unknown data kind {data!r}; valid: {', '.join(DATA_KINDS)}")
        self.actor, self.tok = build_actor(cfg, dist, total_optimizer_steps)
        self.pad = self.tok.pad_token_id
        self.critic = build_critic(cfg, dist, total_optimizer_steps) if with_critic else None
        # The initial policy, built only when something needs it (sharded under ZeRO-3).
        self.ref = build_reference(cfg, dist) if with_reference else None
        self.teacher = build_teacher(cfg, dist, self.tok) if with_teacher else None
        self.reward = build_reward_fn(cfg, dist)
        self.splits = splits = build_data(cfg)
        self.test = prompt_samples(splits.test[: cfg.eval.size])
        self.test_ids = encode_prompts(self.tok, self.test, cfg)
        self.train_ids: list[list[int]] = []
        self.test_pairs = []
        if data == "prompts":
            self.train = prompt_samples(splits.train)
            self.train_ids = encode_prompts(self.tok, self.train, cfg)
        elif data == "examples":
            if not splits.train:
                raise ConfigError(f"data={cfg.data.name} has no training examples")
            self.train = self._encode(cfg, sft_examples(splits.train))
        else:
            self.train = self._encode(cfg, pair_examples(splits.train))
            self.test_pairs = self._encode(cfg, pair_examples(splits.test[: cfg.eval.size]))
        self.order = PromptOrder(len(self.train), cfg.seed)
        self.sampler = None  # rollout.engine=vllm: the colocated vLLM engine (``start_sampler``)

    def _encode(self, cfg: RunConfig, examples: list[tuple]):
        """Tokenised examples with EOS and ``algo.max_length``/``max_prompt_length``/``truncation``."""
        a = cfg.algo
        return encode_examples(self.tok, examples, eos_ids=eos_token_ids(self.actor.module, self.tok),
                               system_prompt=cfg.data.system_prompt, use_chat_template=cfg.data.use_chat_template,
                               max_length=a.max_length, max_prompt_length=a.max_prompt_length,
                               truncation=a.truncation)


def start_sampler(cfg: RunConfig, ctx, dist: Dist) -> None:
    """``rollout.engine=vllm``: start the colocated vLLM engine as ``ctx.sampler`` with the policy's
    current weights (``lifecycle.start`` calls it after resuming, before the first evaluation); the
    loop pushes the weights after each update (``push_weights``). Sized for the longest training
    prompt + ``rollout.max_new_tokens`` and the longest held-out prompt + ``eval.max_new_tokens``."""
    if cfg.rollout.engine == "vllm":
        from rltrain.rollout.vllm_engine import colocated

        longest = max([len(p) + cfg.rollout.max_new_tokens for p in ctx.train_ids]
                      + [len(p) + cfg.eval.max_new_tokens for p in ctx.test_ids], default=1)
        ctx.sampler = colocated(cfg, ctx.actor.module, ctx.tok, max_model_len=longest, dist=dist)


def rollout_gathered(ctx):
    """Context for a rollout phase: the actor's ZeRO-3 parameters gathered once (``actor.gathered()``) for
    rltrain's engine; nothing with the vLLM engine, which samples with its own pushed copy (a whole-model
    gather per rank would only cost memory)."""
    return contextlib.nullcontext() if ctx.sampler is not None else ctx.actor.gathered()


def push_weights(ctx, metrics: dict) -> None:
    """``rollout.engine=vllm``: after an update, push the policy's weights into the engine (the next
    rollout or evaluation samples with them), timed as ``time/weight_sync``; a no-op otherwise.
    Under ZeRO-3 a collective (each parameter is gathered in turn): every rank calls it."""
    if ctx.sampler is not None:
        metrics["time/weight_sync"] = ctx.sampler.push(ctx.actor.module)


def close(ctx) -> None:
    """End of a run: stop what its reward started (math-verify's worker pool, the code sandbox's
    workers) now, not in the interpreter's exit, where a process pool's exit hook can find its
    pipe already closed and print a traceback (seen on the default path under load); shut the vLLM
    engine down."""
    if getattr(ctx, "sampler", None) is not None:
        ctx.sampler.close()
    close_reward = getattr(getattr(ctx, "reward", None), "close", None)
    if close_reward is not None:
        close_reward()
