"""The settings both frameworks run with, and how each maps onto rltrain's and TRL's knobs.

One rltrain GRPO step = ``prompts_per_step`` prompts × ``samples_per_prompt`` samples = N sequences
generated, then ``minibatches_per_step`` optimizer steps over them, ``micro_batch_size`` sequences
per forward. TRL's GRPOTrainer counts optimizer steps; the same work is
``per_device_train_batch_size = micro_batch_size``,
``gradient_accumulation_steps = N / (minibatches_per_step · micro_batch_size)``,
``steps_per_generation = N / micro_batch_size`` (so one generation batch of N sequences feeds
``minibatches_per_step`` optimizer steps) and ``max_steps = steps · minibatches_per_step``.

One rltrain DPO step = ``pairs_per_step`` pairs, ``micro_batch_size`` sequences per forward (half as
many pairs, chosen and rejected concatenated), one optimizer step. TRL's DPOTrainer:
``per_device_train_batch_size = micro_batch_size / 2`` pairs,
``gradient_accumulation_steps = pairs_per_step / (micro_batch_size / 2)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


def native_dtype() -> str:
    """rltrain's ``model.dtype=auto``: fp32 on CPUs (a CPU without avx512_bf16/AMX would otherwise
    measure PyTorch's bf16 emulation), bf16 on a bf16 GPU."""
    from rltrain.engine.model import resolve_dtype

    return resolve_dtype("auto")


@dataclass
class GRPOSettings:
    model: str = "smollm2_135m"
    steps: int = 5
    prompts_per_step: int = 8
    samples_per_prompt: int = 8
    max_new_tokens: int = 64
    micro_batch_size: int = 16
    minibatches_per_step: int = 1
    lr: float = 2e-5
    temperature: float = 1.0
    threads: int = 2
    seed: int = 0
    n_train: int = 2000
    dtype: str = field(default_factory=native_dtype)

    @property
    def sequences(self) -> int:
        return self.prompts_per_step * self.samples_per_prompt

    def check(self) -> None:
        N, M, mb = self.sequences, self.minibatches_per_step, self.micro_batch_size
        if N % (M * mb):
            raise ValueError(f"prompts_per_step·samples_per_prompt = {N} must divide into minibatches_per_step "
                             f"({M}) × micro_batch_size ({mb})")

    def trl(self) -> dict:
        """GRPOConfig fields that encode these settings (see the module docstring)."""
        self.check()
        N, M, mb = self.sequences, self.minibatches_per_step, self.micro_batch_size
        return dict(per_device_train_batch_size=mb, gradient_accumulation_steps=N // (M * mb),
                    steps_per_generation=N // mb, num_generations=self.samples_per_prompt,
                    max_completion_length=self.max_new_tokens, temperature=self.temperature, top_p=1.0, top_k=0,
                    beta=0.0, epsilon=0.2, loss_type="dapo", scale_rewards="group", num_iterations=1,
                    learning_rate=self.lr, max_steps=self.steps * M)

    def rltrain(self) -> list[str]:
        """rltrain CLI overrides for these settings."""
        self.check()
        return ["algo=grpo", f"model={self.model}", f"model.dtype={self.dtype}", "data=arith",
                f"data.n_train={self.n_train}", "data.n_test=4", f"train.steps={self.steps}",
                f"train.prompts_per_step={self.prompts_per_step}",
                f"train.samples_per_prompt={self.samples_per_prompt}",
                f"train.minibatches_per_step={self.minibatches_per_step}",
                f"train.micro_batch_size={self.micro_batch_size}",
                f"train.lr={self.lr}", f"rollout.max_new_tokens={self.max_new_tokens}",
                f"rollout.temperature={self.temperature}", "algo.kl_coef=0.0",
                f"launch.threads_per_rank={self.threads}",
                f"seed={self.seed}"]


@dataclass
class DPOSettings:
    model: str = "smollm2_135m"
    steps: int = 5
    pairs_per_step: int = 16
    micro_batch_size: int = 16
    beta: float = 0.1
    lr: float = 5e-6
    max_length: int = 512
    threads: int = 2
    seed: int = 0
    dtype: str = field(default_factory=native_dtype)

    @property
    def n_train(self) -> int:
        """Exactly the pairs the run uses: both frameworks precompute reference log-probs for them."""
        return self.steps * self.pairs_per_step

    def check(self) -> None:
        if self.micro_batch_size % 2 or self.pairs_per_step % (self.micro_batch_size // 2):
            raise ValueError(f"micro_batch_size ({self.micro_batch_size}) must be even and pairs_per_step "
                             f"({self.pairs_per_step}) a multiple of micro_batch_size / 2")

    def trl(self) -> dict:
        self.check()
        per = self.micro_batch_size // 2
        return dict(per_device_train_batch_size=per, gradient_accumulation_steps=self.pairs_per_step // per,
                    beta=self.beta, loss_type=["sigmoid"], max_length=self.max_length,
                    precompute_ref_log_probs=True, precompute_ref_batch_size=per, learning_rate=self.lr,
                    max_steps=self.steps)

    def rltrain(self) -> list[str]:
        self.check()
        return ["algo=dpo", f"model={self.model}", f"model.dtype={self.dtype}", "data=synthetic_prefs",
                f"data.n_train={self.n_train}", "data.n_test=4", f"train.steps={self.steps}",
                f"train.prompts_per_step={self.pairs_per_step}", f"train.micro_batch_size={self.micro_batch_size}",
                f"train.lr={self.lr}", f"algo.beta={self.beta}", "algo.loss_type=sigmoid",
                f"algo.max_length={self.max_length}", "algo.cache_ref_logps=true",
                f"launch.threads_per_rank={self.threads}", f"seed={self.seed}"]


# Shared by both frameworks: AdamW (β 0.9/0.999, no weight decay), constant LR, no warm-up,
# gradient clipping at 1.0, no gradient checkpointing (TRL 1.x turns it on by default; rltrain off).
TRL_COMMON = dict(lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999,
                  max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                  dataloader_num_workers=0, gradient_checkpointing=False)
RLTRAIN_COMMON = ["train.lr_schedule=constant", "train.warmup_steps=0", "train.weight_decay=0.0",
                  "train.max_grad_norm=1.0", "log.console=false", "eval.at_start=false", "eval.size=1",
                  "checkpoint.save_final=false"]


def as_dict(s) -> dict:
    return asdict(s)
