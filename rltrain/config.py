"""The configuration schema: one dataclass per config-group option, registered in Hydra's
ConfigStore, plus ``validate()`` for the rules that span fields.

Every field carries a docstring comment. Hydra rejects unknown keys and wrong types against these
schemas; ``rltrain.cli`` turns those rejections into messages that list the valid keys. Defaults
live here (and in ``conf/``), never in code further down.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ConfigError(ValueError):
    """A configuration value or combination that cannot run; the message names the keys."""


# --------------------------------------------------------------------------- algo


@dataclass
class AlgoConfig:
    """Fields shared by every algorithm option (``algo=...``)."""

    name: str = MISSING
    """Algorithm family: sft | dpo | ppo | grpo | spo_chain | spo_tree."""
    loss_agg_mode: str = "token-mean"
    """How per-token losses are reduced: token-mean | seq-mean-token-mean | seq-mean-token-sum |
    seq-mean-token-sum-norm (ALGORITHMS.md §0)."""
    loss_agg_constant: Optional[float] = None
    """Divisor C of seq-mean-token-sum-norm; None = rollout.max_new_tokens."""
    kl_coef: float = 0.0
    """β of the KL term to the frozen reference; 0 = no reference model is loaded at all."""
    kl_estimator: str = "k3"
    """KL estimator of the KL loss: k1 | k2 | k3 | abs | k3+."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient (loss -= c·agg(H)); 0 = off."""


@dataclass
class GRPOConfig(AlgoConfig):
    """GRPO and its DAPO / Dr. GRPO variants (ALGORITHMS.md §3)."""

    name: str = "grpo"
    adv_scale: str = "std"
    """Group advantage scaling: std (GRPO) | none (Dr. GRPO)."""
    std_ddof: int = 1
    """Degrees of freedom of the group std: 1 (verl, default) | 0 (population)."""
    adv_eps: float = 1e-6
    """ε added to the group std."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and sample more prompts to refill."""
    max_gen_batches: int = 10
    """DAPO: give up after this many generation batches in one step (≤ 0 = no limit)."""
    overlong_buffer: int = 0
    """DAPO overlong shaping: length of the soft-penalty buffer L_cache in tokens (0 = off)."""
    overlong_factor: float = 1.0
    """DAPO overlong shaping: penalty factor."""


@dataclass
class PPOConfig(AlgoConfig):
    """PPO with a critic, with the three tricks of Xu et al. (ALGORITHMS.md §2)."""

    name: str = "ppo"
    kl_coef: float = 0.1
    kl_in_reward: bool = True
    """True: k1 KL penalty in the token rewards (PPO style); False: KL loss (kl_estimator)."""
    adaptive_kl: bool = False
    """Adaptive KL controller (target kl_target over kl_horizon samples)."""
    kl_target: float = 6.0
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 1.0
    adv_norm: bool = True
    """Trick 1: whiten advantages over the whole step's batch across ranks."""
    adv_norm_scope: str = "batch"
    """batch (across ranks, default) | per_minibatch."""
    ref_ema: float = 0.001
    """Trick 3: reference ← η·actor + (1−η)·reference after every step; 0 = frozen reference."""
    value_clip: float = 0.2
    """Clip of the value update around the rollout-time values (ReaLHF value_eps_clip); ≤ 0 = off."""
    value_norm: bool = True
    """Running normalisation of value targets (β = 0.99995)."""
    value_loss: str = "mse"
    """Critic loss: mse (½e²) | huber (δ = 10)."""
    critic_lr: float = 5e-6
    """Learning rate of the critic's own optimizer (AdamW; train.* gives the rest)."""
    critic_path: Optional[str] = None
    """Critic backbone (HF directory or hub id; a value_head.pt next to it is loaded too);
    None = a copy of the policy backbone with a fresh value head."""
    critic_warmup_steps: int = 0
    """Steps at the start that train only the critic (the actor is not updated)."""
    max_reward_clip: float = 5.0
    """Scores are clipped to ±this before they enter the token rewards."""
    score_truncated: bool = False
    """False (ReaLHF): only responses that finished get their score; truncated ones bootstrap from
    the critic. True (verl): every response gets its score on its last token, nothing bootstraps."""
    early_stop_ratio: float = 5.0
    """Zero a micro-batch's policy loss if its mean importance ratio exceeds this (≤ 0 = off)."""


@dataclass
class SPOConfig(AlgoConfig):
    """Fields shared by SPO chain and tree (Segment Policy Optimization, ALGORITHMS.md §4)."""

    name: str = MISSING
    kl_coef: float = 1e-4
    cut_threshold: float = 0.9
    """Chain: a token with p < threshold is a cutpoint candidate; both: the probability mask's threshold."""
    adv_whiten: str = "batch"
    """batch (across ranks) | per_minibatch (SPO code) | none."""
    prob_mask: bool = True
    """Zero the advantage of tokens sampled with probability ≥ cut_threshold (SPO §4.4)."""


@dataclass
class SPOChainConfig(SPOConfig):
    """SPO-chain: Monte-Carlo values at cut states of each sampled response."""

    name: str = "spo_chain"
    partition: str = "cutpoint"
    """cutpoint (low-probability tokens) | fixed (near-equal token chunks)."""
    cut_interval: int = 5
    """Keep every k-th candidate."""
    num_segments: int = 4
    """partition=fixed: number of chunks."""
    mc_rollouts: int = 4
    """Monte-Carlo continuations per cutpoint (K)."""
    first_segment_value: str = "group_mean"
    """group_mean (rltrain default) | zero (official code)."""


@dataclass
class SPOTreeConfig(SPOConfig):
    """SPO-tree: a sampled tree of segments, values from the leaves, edges replayed."""

    name: str = "spo_tree"
    branching: list[int] = field(default_factory=lambda: [6, 6, 6])
    """Branching factor per depth."""
    segment_len: int = 30
    """Tokens per segment at non-final depths (M)."""
    tree_adv: str = "rloo"
    """rloo (V(child) − V(parent)) | grpo (divided by the sibling std)."""
    replay_max_age: int = 8
    """Drop replayed edges this many steps old; 0 disables edge replay."""
    replay_per_question: int = 32
    """Edges drawn per question per step."""


@dataclass
class DPOConfig(AlgoConfig):
    """DPO, IPO, conservative DPO and iterative DPO (ALGORITHMS.md §1).

    Offline: ``train.prompts_per_step`` pairs per optimizer step (global). Iterative: ``algo.rounds``
    rounds of ``train.steps / algo.rounds`` steps; each round samples ``train.samples_per_prompt``
    responses for each of its prompts, pairs best vs worst, then trains one pass over those pairs.
    """

    name: str = "dpo"
    beta: float = 0.1
    loss_type: str = "sigmoid"
    """sigmoid (DPO) | ipo."""
    label_smoothing: float = 0.0
    """cDPO ε (fraction of flipped labels), in [0, 0.5)."""
    reference_free: bool = False
    """Uniform reference: no reference model, reference log-ratio 0."""
    cache_ref_logps: bool = True
    """Offline DPO: compute reference log-probs once, before training, and cache them on disk
    (no reference model kept in memory); false = a frozen reference model forwards every batch."""
    ref_cache_dir: Optional[str] = None
    """Where the reference log-prob cache lives; None = the run directory. A shared directory lets
    runs that differ only in β or the loss reuse it (entries are keyed by model, data, lengths)."""
    max_length: int = 512
    """Prompt + response tokens; longer pairs are truncated (prompt first, then the responses)."""
    max_prompt_length: int = 256
    truncation: str = "keep_end"
    """How the prompt is truncated: keep_end | keep_start."""
    iterative: bool = False
    """Iterative DPO: sample K responses per prompt, pair best vs worst, train, repeat."""
    rounds: int = 3
    """Iterative DPO: number of rounds; train.steps must be a multiple of it."""
    reference: str = "initial"
    """Iterative DPO reference: initial (the starting policy) | previous_iterate (the policy at the
    start of each round)."""


@dataclass
class SFTConfig(AlgoConfig):
    """Supervised fine-tuning on (prompt, response) with the prompt masked.

    ``train.prompts_per_step`` examples per optimizer step (global); the loss is
    ``algo.loss_agg_mode`` (token-mean) of −log π over response tokens (EOS included).
    """

    name: str = "sft"
    max_length: int = 512
    """Prompt + response tokens; longer examples are truncated (prompt first, then the response)."""
    max_prompt_length: int = 256
    truncation: str = "keep_end"
    """How the prompt is truncated: keep_end | keep_start."""


# --------------------------------------------------------------------------- token selection / policy loss


@dataclass
class TokenSelectionConfig:
    """Which response tokens receive policy gradient (``token_selection=...``). Fields other than
    ``name`` are exactly the selector's options (rltrain/algos/registry.py)."""

    name: str = "all"
    """all | high_entropy | prob_mask."""


@dataclass
class HighEntropyConfig(TokenSelectionConfig):
    """Top-ρ highest-entropy ("forking") tokens (Beyond the 80/20 rule, ALGORITHMS.md §5)."""

    name: str = "high_entropy"
    top_ratio: float = 0.2
    """Fraction ρ of the batch's valid tokens kept (highest entropy)."""
    normalize: str = "all"
    """Loss denominator: all response tokens (paper, default) | selected (official code)."""
    scope: str = "batch"
    """Threshold pool: batch (whole step, across ranks) | micro_batch (official code)."""


@dataclass
class ProbMaskConfig(TokenSelectionConfig):
    """SPO's probability mask: only tokens sampled with probability below the threshold."""

    name: str = "prob_mask"
    threshold: float = 0.9
    normalize: str = "all"
    """Loss denominator: all response tokens | selected."""


@dataclass
class PolicyLossConfig:
    """Per-token policy loss (``policy_loss=...``). Fields other than ``name`` are exactly the
    loss's options (rltrain/algos/registry.py)."""

    name: str = "clip"
    """clip | clip_cov | kl_cov."""


@dataclass
class ClipLossConfig(PolicyLossConfig):
    """PPO clipped surrogate; clip-higher (DAPO) is clip_high=0.28."""

    name: str = "clip"
    clip_low: float = 0.2
    """ε_low: the ratio is clipped below at 1 − clip_low."""
    clip_high: float = 0.2
    """ε_high: the ratio is clipped above at 1 + clip_high."""
    dual_clip: Optional[float] = None
    """Dual-clip constant c (> 1) capping the loss of negative-advantage tokens; None = off."""


@dataclass
class ClipCovConfig(PolicyLossConfig):
    """Clip-Cov (Cui et al. 2025, ALGORITHMS.md §6)."""

    name: str = "clip_cov"
    clip_low: float = 1.0
    """PPO clip ε_low (the official scripts use 1, i.e. ratio in [0, 2])."""
    clip_high: float = 1.0
    cov_low: float = 1.0
    """ω_low: candidates have covariance above this."""
    cov_high: float = 5.0
    """ω_high: candidates have covariance below this."""
    select_ratio: float = 2e-4
    """Fraction r of tokens whose gradient is detached."""
    scope: str = "batch"
    """Selection pool: batch (whole step, across ranks) | micro_batch (official code)."""


@dataclass
class KLCovConfig(PolicyLossConfig):
    """KL-Cov (Cui et al. 2025, ALGORITHMS.md §6)."""

    name: str = "kl_cov"
    select_ratio: float = 2e-4
    """Fraction of tokens (top by covariance) that get the KL penalty (2e-4 = 0.02%)."""
    kl_coef: float = 1.0
    """β of |log π − log π_old| on the selected tokens."""
    scope: str = "batch"
    """Selection pool: batch (whole step, across ranks) | micro_batch (official code)."""


# --------------------------------------------------------------------------- reward / data / model


JUDGE_TEMPLATE = (
    "You are checking a solution against a reference answer. Decide whether the final answer of the solution "
    "below (which may be incomplete) matches the reference answer. The reference answer may be an option letter, "
    "a number, an expression, a list, or text in any language; judge the meaning, not the wording or the "
    "language.\nReply with exactly YES if the final answer matches the reference answer, and NO otherwise, "
    "including when the solution is unclear or incomplete or gives no final answer.\n\nQuestion: {question}"
    "\n\nSolution Process (Final Step Only): {response}\n\nReference Answer: {reference}\n\nOutput:"
)


@dataclass
class RewardConfig:
    """Reward source (``reward=...``). Fields other than ``name`` and ``max_fail_fraction`` are
    exactly the keyword arguments of the reward's constructor (one subclass per option)."""

    name: str = "math"
    """math | code | judge | classifier | python | combined."""
    max_fail_fraction: float = 0.1
    """Stop the run when more than this fraction of one step's reward calls raise."""


@dataclass
class MathRewardConfig(RewardConfig):
    name: str = "math"
    correct_score: float = 1.0
    wrong_score: float = 0.0
    format_score: Optional[float] = None
    """Score for a boxed but wrong answer; None = wrong_score."""
    use_math_verify: bool = True
    """LaTeX equivalence through math-verify (in a process pool) after the fast checks."""
    timeout_s: int = 5
    """Per-item time limit of math-verify (whole seconds)."""
    num_workers: int = 2
    """math-verify worker processes."""


@dataclass
class PythonRewardConfig(RewardConfig):
    """Any Python callable ``fn(samples, completions) -> list[float] | RewardOutput``."""

    name: str = "python"
    fn: str = MISSING
    """Import path ``package.module:function``."""
    per_item: bool = False
    """True: the function scores one (sample, completion) at a time."""
    fn_kwargs: Optional[dict[str, Any]] = None
    """Extra keyword arguments passed to the function."""


@dataclass
class CodeRewardConfig(RewardConfig):
    """Programs run against test cases in a sandbox (ALGORITHMS.md §8)."""

    name: str = "code"
    mode: str = "all_pass"
    """all_pass (1 if every test passes) | pass_rate | shaped (CodeRL-style −1/−0.6/−0.3/+1)."""
    timeout: float = 4.0
    """Seconds per test case."""
    program_timeout: float = 30.0
    """Seconds for all tests of one program."""
    memory_mb: int = 1024
    file_mb: int = 16
    max_processes: int = 16
    max_tests: Optional[int] = None
    """Run at most this many tests per problem (None = all)."""
    float_tol: float = 1e-6
    num_workers: Optional[int] = None
    """Programs run in parallel (None = number of cores)."""
    isolation: str = "auto"
    """auto | namespace (pid/net/mount namespaces, chroot, unprivileged uid) | process (limits only)."""


@dataclass
class JudgeRewardConfig(RewardConfig):
    """A generative judge model: soft reward P(YES) from one forward pass (ALGORITHMS.md §7)."""

    name: str = "judge"
    model_path: Optional[str] = "smollm2_135m"
    """smollm2_135m | tiny | a hub id or local directory."""
    template: str = JUDGE_TEMPLATE
    """Prompt with {question}, {response} (the tail of the response) and {reference}."""
    mode: str = "soft"
    """soft (P(YES) renormalised over YES/NO) | binary | raw (unnormalised P(YES))."""
    tail_chars: int = 1000
    """How much of the response's end the judge sees."""
    batch_size: int = 8
    dtype: str = "fp32"
    yes_strings: list[str] = field(default_factory=lambda: ["YES", "Yes", " YES", " Yes"])
    no_strings: list[str] = field(default_factory=lambda: ["NO", "No", " NO", " No"])
    use_chat_template: bool = True


@dataclass
class ClassifierRewardConfig(RewardConfig):
    """A sequence-classification reward model giving a scalar."""

    name: str = "classifier"
    model_path: Optional[str] = MISSING
    normalize: str = "none"
    """none | running (z-score with running statistics) | fixed ((x − bias) · scale)."""
    bias: float = 0.0
    scale: float = 1.0
    label_index: Optional[int] = None
    batch_size: int = 8
    max_length: int = 2048
    dtype: str = "fp32"
    use_chat_template: bool = True
    eps: float = 1e-6


@dataclass
class CombinedRewardConfig(RewardConfig):
    """A weighted sum of rewards, each logged separately."""

    name: str = "combined"
    components: list[Any] = field(default_factory=list)
    """Each {name, weight, kwargs, label?}, e.g. [{name: math, weight: 1.0}, {name: python, weight: 0.1,
    kwargs: {fn: "my.mod:format_reward"}}]."""


@dataclass
class DataConfig:
    """Dataset (``data=...``). Fields other than the three below are exactly the keyword
    arguments of the dataset builder (one subclass per option)."""

    name: str = "arith"
    """arith | gsm8k | math | apps | qa | prefs | synthetic_prefs."""
    system_prompt: Optional[str] = None
    """System message prepended when the tokenizer has a chat template."""
    use_chat_template: bool = True


@dataclass
class ArithDataConfig(DataConfig):
    """Synthetic arithmetic word problems, generated offline (rltrain/data/arith.py)."""

    name: str = "arith"
    difficulty: int = 1
    """1 = two-digit addition; 2 = 3-digit ±; 3 = three terms; 4 = with a product; 5 = word problems."""
    n_train: int = 2000
    n_test: int = 200
    seed: int = 0
    instruction: str = "Give the final answer as \\boxed{N}."
    """Appended to every question."""


@dataclass
class SyntheticPrefsConfig(ArithDataConfig):
    """Offline preference pairs from arith: correct worked solution vs a wrong final answer."""

    name: str = "synthetic_prefs"


@dataclass
class FileDataConfig(DataConfig):
    """Fields shared by datasets read from a hub id or local jsonl/json/parquet files."""

    path: Optional[str] = None
    """Local training file (jsonl/json/parquet); None = load hub_id."""
    test_path: Optional[str] = None
    """Local test file; None = hold out test_fraction of the training rows (or the hub test split)."""
    test_fraction: float = 0.1
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    train_split: str = "train"
    test_split: Optional[str] = "test"
    n_train: Optional[int] = None
    """Use only the first n training rows (None = all)."""
    n_test: Optional[int] = None
    seed: int = 0


@dataclass
class GSM8KDataConfig(FileDataConfig):
    """GSM8K: reference answer after ``####``."""

    name: str = "gsm8k"
    hub_id: Optional[str] = "openai/gsm8k"
    hub_config: Optional[str] = "main"
    question_key: str = "question"
    answer_key: str = "answer"
    instruction: str = "Give the final answer as \\boxed{N}."


@dataclass
class MathDataConfig(FileDataConfig):
    """MATH: the ``answer`` column, else the last ``\\boxed{}`` of the solution."""

    name: str = "math"
    hub_id: Optional[str] = "DigitalLearningGmbH/MATH-lighteval"
    question_key: str = "problem"
    answer_key: str = "answer"
    solution_key: str = "solution"
    instruction: str = "Put the final answer within \\boxed{}."


@dataclass
class PreferenceDataConfig(FileDataConfig):
    """Preference pairs (prompt / chosen / rejected; text or chat messages)."""

    name: str = "preference"
    prompt_key: str = "prompt"
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"


@dataclass
class AppsDataConfig(FileDataConfig):
    """APPS-format coding problems (question + input_output tests), scored by reward=code."""

    name: str = "apps"
    hub_id: Optional[str] = "codeparrot/apps"
    hub_config: Optional[str] = "all"
    question_key: str = "question"
    tests_key: str = "input_output"
    difficulties: Optional[list[str]] = None
    """Keep only these difficulty levels (e.g. [introductory])."""
    instruction: str = "Write your solution in Python 3 inside one ```python code block."


@dataclass
class QADataConfig(FileDataConfig):
    """Free-form question/answer data in any domain (for reward=judge)."""

    name: str = "qa"
    test_split: Optional[str] = None
    question_key: str = "question"
    answer_key: str = "answer"
    meta_keys: Optional[list[str]] = None
    """Extra columns kept in Sample.meta."""
    instruction: str = "Reason briefly, then state your final answer on the last line."


@dataclass
class LoraSettings:
    """LoRA adapters through peft (``model.lora.r=16``): only the adapters train; checkpoints and
    exports hold the merged weights, a plain HF model."""

    r: int = 0
    """Adapter rank; 0 = full fine-tuning."""
    alpha: float = 32.0
    """Scaling numerator: the update is (alpha / r)·B·A."""
    dropout: float = 0.0
    """Dropout on the adapter input. Above 0 the training forward differs from the rollout's, so
    the stored sampling log-probs are no longer the current policy's."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names to adapt (e.g. [q_proj, v_proj]); [all-linear] = every linear layer but the LM head."""


@dataclass
class ModelConfig:
    """Policy model (``model=...``)."""

    name: str = "smollm2_135m"
    """smollm2_135m (real, offline) | tiny (random, tests) | hf (any hub id or local dir)."""
    path: Optional[str] = None
    """Hub id or local directory (model=hf), or a saved tiny model."""
    dtype: str = "auto"
    """Compute dtype: auto (bf16 on a GPU that runs it natively, fp32 on CPUs; see
    engine/model.py:resolve_dtype) | bf16 (fp32 master weights kept for the optimizer) | fp32."""
    gradient_checkpointing: bool = False
    tiny_hidden_size: int = 64
    tiny_layers: int = 2
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class DeepSpeedConfig:
    """DeepSpeed ZeRO stage (``deepspeed=...``)."""

    name: str = "none"
    """none | zero1 | zero2 | zero3 | zero3_offload."""
    stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False


# --------------------------------------------------------------------------- shared sections


@dataclass
class TrainConfig:
    """Optimisation and global batch semantics (DESIGN.md: per iteration, across all ranks)."""

    steps: int = 10
    """Optimizer iterations (rollout batches)."""
    time_budget_s: float = 0.0
    """Stop early once the summed step time (evaluation excluded) reaches this many seconds; the
    run then evaluates and checkpoints as after its last step. 0 = off. For equal-wall-time
    comparisons; the learning-rate schedule still spans ``steps``."""
    prompts_per_step: int = 8
    samples_per_prompt: int = 8
    minibatches_per_step: int = 1
    """Optimizer steps per rollout batch."""
    epochs: int = 1
    """Passes over each rollout batch."""
    micro_batch_size: int = 16
    """Sequences per forward pass per rank (memory knob; does not change the loss)."""
    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    """constant | linear | cosine (after warmup)."""
    max_grad_norm: float = 1.0


@dataclass
class RolloutConfig:
    """Sampling."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_strings: list[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    """Greedy evaluation on the test split."""

    every: int = 0
    """Evaluate every N steps (0 = only at start and end)."""
    size: int = 200
    max_new_tokens: int = 64
    at_start: bool = True


@dataclass
class CheckpointConfig:
    every: int = 0
    """Save every N steps (0 = only at the end)."""
    keep: int = 2
    """Complete checkpoints kept (older ones are deleted)."""
    save_final: bool = True


@dataclass
class LaunchConfig:
    nproc_per_node: int = 1
    """Local worker processes (torch.distributed: gloo on CPU, nccl on GPU)."""
    threads_per_rank: int = 0
    """OMP/torch threads per rank; 0 = cores / ranks."""
    timeout_s: int = 600
    """A rank that stops answering makes the job exit after this many seconds."""


@dataclass
class LogConfig:
    console: bool = True
    """Rich live display (falls back to plain lines when not a terminal)."""
    tensorboard: bool = False


@dataclass
class RunConfig:
    """The whole run."""

    algo: AlgoConfig = MISSING
    token_selection: TokenSelectionConfig = field(default_factory=TokenSelectionConfig)
    policy_loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    log: LogConfig = field(default_factory=LogConfig)
    seed: int = 0
    resume: str = "auto"
    """auto (continue from the run dir's last complete checkpoint if any) | never | <run dir>."""
    run_dir: Optional[str] = None
    """Where outputs go; None = Hydra's output directory."""


# ONE option table: every config-group option by name and its schema. The ConfigStore nodes
# (``<option>_schema``, what conf/<group>/<option>.yaml extends), the valid names in errors and the
# schema used to reload a config.yaml all derive from it; registries are checked against it below.
OPTIONS: dict[str, dict[str, type]] = {
    "algo": {"grpo": GRPOConfig, "ppo": PPOConfig, "spo_chain": SPOChainConfig, "spo_tree": SPOTreeConfig,
             "dpo": DPOConfig, "sft": SFTConfig},
    "token_selection": {"all": TokenSelectionConfig, "high_entropy": HighEntropyConfig, "prob_mask": ProbMaskConfig},
    "policy_loss": {"clip": ClipLossConfig, "clip_cov": ClipCovConfig, "kl_cov": KLCovConfig},
    "reward": {"math": MathRewardConfig, "python": PythonRewardConfig, "code": CodeRewardConfig,
               "judge": JudgeRewardConfig, "classifier": ClassifierRewardConfig, "combined": CombinedRewardConfig},
    "data": {"arith": ArithDataConfig, "synthetic_prefs": SyntheticPrefsConfig, "gsm8k": GSM8KDataConfig,
             "math": MathDataConfig, "preference": PreferenceDataConfig, "apps": AppsDataConfig,
             "qa": QADataConfig},
}
# Groups with one schema for every option (the option only sets values).
SINGLE_SCHEMA: dict[str, type] = {"model": ModelConfig, "deepspeed": DeepSpeedConfig}

# The training loop of each algo option.
LOOPS: dict[str, str] = {
    "grpo": "rltrain.loops.grpo:train",
    "ppo": "rltrain.loops.ppo:train",
    "spo_chain": "rltrain.loops.spo:train",
    "spo_tree": "rltrain.loops.spo:train",
    "dpo": "rltrain.loops.dpo:train",
    "sft": "rltrain.loops.sft:train",
}
assert set(LOOPS) == set(OPTIONS["algo"]), "every algo option needs a loop"

# Derived views (kept for callers of the old names).
ALGO_SCHEMAS = OPTIONS["algo"]
OPTION_SCHEMAS = {g: OPTIONS[g] for g in ("data", "reward", "token_selection", "policy_loss")}


def _check_registries() -> None:
    """Every option of the table has its algos registry entry (the registry may hold more)."""
    from rltrain.algos import registry

    for group in ("token_selection", "policy_loss"):
        missing = set(OPTIONS[group]) - set(registry.REGISTRIES[group])
        if missing:
            raise ConfigError(f"{group} options {sorted(missing)} have no registry entry in rltrain/algos/registry.py")


def register_configs() -> None:
    """Put every schema into Hydra's ConfigStore (yaml options extend these by name)."""
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    for group, options in OPTIONS.items():
        for name, schema in options.items():
            cs.store(group=group, name=f"{name}_schema", node=schema)
    for group, schema in SINGLE_SCHEMA.items():
        cs.store(group=group, name=f"{group}_schema", node=schema)


# --------------------------------------------------------------------------- validation


def schema_keys(schema) -> list[str]:
    """Field names of a dataclass schema (used in error messages)."""
    return [f.name for f in fields(schema)] if is_dataclass(schema) else []


def _choice(key: str, value: str, valid) -> None:
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")


def validate(cfg: RunConfig, world_size: int = 1) -> None:
    """Check the rules that span fields; raise ConfigError naming the keys and numbers."""
    t, a = cfg.train, cfg.algo
    from rltrain.algos.core import AGGREGATION_MODES, KL_KINDS

    _check_registries()
    for group in OPTIONS:
        _choice(f"{group}.name", getattr(cfg, group).name, list(OPTIONS[group]))
    if not isinstance(a, OPTIONS["algo"][a.name]):
        raise ConfigError(f"algo.name={a.name!r} does not match its schema {type(a).__name__}: pick the option "
                          f"with algo={a.name}, not algo.name={a.name}")
    _choice("algo.loss_agg_mode", a.loss_agg_mode, list(AGGREGATION_MODES))
    _choice("algo.kl_estimator", a.kl_estimator, list(KL_KINDS))
    pl = cfg.policy_loss
    for key in ("clip_low", "clip_high", "cov_low", "cov_high", "select_ratio"):
        if hasattr(pl, key) and getattr(pl, key) < 0:
            raise ConfigError(f"policy_loss.{key}={getattr(pl, key)} must be ≥ 0")
    if hasattr(pl, "select_ratio") and not 0 < pl.select_ratio <= 1:
        raise ConfigError(f"policy_loss.select_ratio={pl.select_ratio} must be in (0, 1]")
    if hasattr(pl, "cov_low") and pl.cov_low > pl.cov_high:
        raise ConfigError(f"policy_loss.cov_low={pl.cov_low} must be ≤ policy_loss.cov_high={pl.cov_high}")
    if getattr(pl, "dual_clip", None) is not None and pl.dual_clip <= 1:
        raise ConfigError(f"policy_loss.dual_clip={pl.dual_clip} must be > 1 (or null = off)")
    if isinstance(cfg.token_selection, ProbMaskConfig) and not 0 < cfg.token_selection.threshold <= 1:
        raise ConfigError(f"token_selection.threshold={cfg.token_selection.threshold} must be in (0, 1]")
    for group in ("token_selection", "policy_loss"):
        node = getattr(cfg, group)
        if hasattr(node, "normalize"):
            _choice(f"{group}.normalize", node.normalize, ["all", "selected"])
        if hasattr(node, "scope"):
            _choice(f"{group}.scope", node.scope, ["batch", "micro_batch"])
    _choice("model.dtype", cfg.model.dtype, ["auto", "bf16", "fp32"])
    _choice("train.lr_schedule", t.lr_schedule, ["constant", "linear", "cosine"])
    _choice("deepspeed.stage", str(cfg.deepspeed.stage), ["0", "1", "2", "3"])
    if isinstance(cfg.token_selection, HighEntropyConfig) and not 0 < cfg.token_selection.top_ratio <= 1:
        raise ConfigError(f"token_selection.top_ratio={cfg.token_selection.top_ratio} must be in (0, 1]")
    for key in ("steps", "prompts_per_step", "samples_per_prompt", "minibatches_per_step", "epochs",
                "micro_batch_size"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key}={getattr(t, key)} must be ≥ 1")
    lora = cfg.model.lora
    if lora.r < 0 or (lora.r > 0 and (lora.alpha <= 0 or not 0 <= lora.dropout < 1 or not lora.target_modules)):
        raise ConfigError(f"model.lora: r={lora.r} must be ≥ 0 (0 = off); with r > 0, alpha={lora.alpha} must be "
                          f"> 0, dropout={lora.dropout} in [0, 1) and target_modules non-empty")
    if t.time_budget_s < 0:
        raise ConfigError(f"train.time_budget_s={t.time_budget_s} must be ≥ 0 (0 = no budget)")
    if cfg.rollout.max_new_tokens < 1:
        raise ConfigError(f"rollout.max_new_tokens={cfg.rollout.max_new_tokens} must be ≥ 1")
    if cfg.rollout.temperature < 0:
        raise ConfigError(f"rollout.temperature={cfg.rollout.temperature} must be ≥ 0")
    if cfg.launch.nproc_per_node < 1:
        raise ConfigError(f"launch.nproc_per_node={cfg.launch.nproc_per_node} must be ≥ 1")

    if a.name in ("grpo", "ppo", "spo_chain"):
        seqs = t.prompts_per_step * t.samples_per_prompt
        if t.prompts_per_step % world_size:
            raise ConfigError(
                f"train.prompts_per_step={t.prompts_per_step} must divide evenly over {world_size} ranks "
                "(a prompt's whole group stays on one rank)")
        if seqs % t.minibatches_per_step:
            raise ConfigError(
                f"train.prompts_per_step × train.samples_per_prompt = {seqs} sequences do not split into "
                f"train.minibatches_per_step={t.minibatches_per_step} equal minibatches")
        per_rank_mb = seqs // t.minibatches_per_step // world_size
        if (seqs // t.minibatches_per_step) % world_size:
            raise ConfigError(
                f"a minibatch of {seqs // t.minibatches_per_step} sequences does not split over {world_size} ranks "
                "(train.prompts_per_step, train.samples_per_prompt, train.minibatches_per_step)")
        if per_rank_mb % t.micro_batch_size and t.micro_batch_size < per_rank_mb:
            raise ConfigError(
                f"a minibatch holds {per_rank_mb} sequences per rank, which train.micro_batch_size="
                f"{t.micro_batch_size} does not divide (gradient accumulation must be whole)")
    if isinstance(a, GRPOConfig):
        _choice("algo.adv_scale", a.adv_scale, ["std", "none"])
        _choice("algo.std_ddof", str(a.std_ddof), ["0", "1"])
        if t.samples_per_prompt < 2 and a.adv_scale == "std":
            raise ConfigError("algo=grpo needs train.samples_per_prompt ≥ 2 (group-normalised advantages)")
    if isinstance(a, PPOConfig):
        _choice("algo.adv_norm_scope", a.adv_norm_scope, ["batch", "per_minibatch"])
        _choice("algo.value_loss", a.value_loss, ["mse", "huber"])
        if not 0 <= a.ref_ema <= 1:
            raise ConfigError(f"algo.ref_ema={a.ref_ema} must be in [0, 1]")
        if not (0 <= a.gamma <= 1 and 0 <= a.lam <= 1):
            raise ConfigError(f"algo.gamma={a.gamma} and algo.lam={a.lam} must be in [0, 1]")
        if a.adaptive_kl and not a.kl_in_reward:
            raise ConfigError("algo.adaptive_kl=true adapts the KL penalty in the reward; it needs "
                              "algo.kl_in_reward=true (the KL loss uses the fixed algo.kl_coef)")
        if a.adaptive_kl and a.kl_coef <= 0:
            raise ConfigError("algo.adaptive_kl=true needs an initial algo.kl_coef > 0")
    if isinstance(a, (DPOConfig, SFTConfig)):
        _choice("algo.truncation", a.truncation, ["keep_end", "keep_start"])
        if not 0 < a.max_prompt_length < a.max_length:
            raise ConfigError(
                f"algo.max_prompt_length={a.max_prompt_length} must be in (0, algo.max_length={a.max_length})")
        if t.prompts_per_step % world_size:
            raise ConfigError(f"train.prompts_per_step={t.prompts_per_step} examples per step must divide "
                              f"evenly over {world_size} ranks")
    if isinstance(a, SPOConfig):
        _choice("algo.adv_whiten", a.adv_whiten, ["batch", "per_minibatch", "none"])
        if not 0 < a.cut_threshold <= 1:
            raise ConfigError(f"algo.cut_threshold={a.cut_threshold} must be in (0, 1]")
    if isinstance(a, SPOChainConfig):
        _choice("algo.partition", a.partition, ["cutpoint", "fixed"])
        _choice("algo.first_segment_value", a.first_segment_value, ["group_mean", "zero"])
    if isinstance(a, SPOTreeConfig):
        _choice("algo.tree_adv", a.tree_adv, ["rloo", "grpo"])
        if not a.branching or any(b < 1 for b in a.branching):
            raise ConfigError(f"algo.branching={list(a.branching)} must be positive integers")
    if isinstance(a, DPOConfig):
        _choice("algo.loss_type", a.loss_type, ["sigmoid", "ipo"])
        _choice("algo.reference", a.reference, ["initial", "previous_iterate"])
        if a.beta <= 0:
            raise ConfigError(f"algo.beta={a.beta} must be > 0")
        if not 0 <= a.label_smoothing < 0.5:
            raise ConfigError(f"algo.label_smoothing={a.label_smoothing} must be in [0, 0.5)")
        if a.loss_type == "ipo" and a.label_smoothing:
            raise ConfigError("algo.label_smoothing applies to algo.loss_type=sigmoid only")
        if a.iterative:
            if a.rounds < 1 or t.steps % a.rounds:
                raise ConfigError(f"algo.iterative=true: train.steps={t.steps} must be a positive multiple of "
                                  f"algo.rounds={a.rounds} (each round trains train.steps / algo.rounds steps)")
            if t.samples_per_prompt < 2:
                raise ConfigError("algo.iterative=true needs train.samples_per_prompt ≥ 2 "
                                  "(best and worst of the sampled responses form a pair)")


def option_kwargs(option) -> dict:
    """An option's fields minus those of its group's base schema: exactly the keyword arguments
    of the function or class the option names."""
    base = next(b for b in (DataConfig, RewardConfig, TokenSelectionConfig, PolicyLossConfig) if isinstance(option, b))
    shared = {f.name for f in dataclasses.fields(base)}
    return {f.name: getattr(option, f.name) for f in dataclasses.fields(option) if f.name not in shared}


def option_schema(group: str, name: str) -> type:
    """The schema class of option ``name`` of a config group (used to reload config.yaml)."""
    if group in SINGLE_SCHEMA:
        return SINGLE_SCHEMA[group]
    _choice(f"{group}.name", name, list(OPTIONS[group]))
    return OPTIONS[group][name]
