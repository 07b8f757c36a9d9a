"""Schemas of the other groups (reward=, data=, model=, deepspeed=) and the shared sections; ``RunConfig``
is the whole run."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from rltrain.algos.correction import CORRECTION_MODES
from rltrain.config.algo import AlgoConfig, PolicyLossConfig, TokenSelectionConfig
from rltrain.config.fields import bounded, one_of
from rltrain.rewards import classifier, code, combined


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
    """Programs run against test cases in a sandbox (docs/algorithms.md §8)."""

    name: str = "code"
    mode: str = one_of(code.MODES, "all_pass")
    """all_pass (1 if every test passes) | pass_rate | shaped (CodeRL-style −1/−0.6/−0.3/+1)."""
    timeout: float = bounded(4.0, "> 0")
    """Seconds per test case (wall clock; CPU seconds too, rounded up)."""
    program_timeout: float = bounded(30.0, "> 0")
    """Seconds for all tests of one program."""
    memory_mb: int = bounded(1024, "≥ 1")
    """Address space of each process of a program, MiB."""
    file_mb: int = bounded(16, "≥ 1")
    """Largest file or stdout one test may write, and the most output read back per program, MiB.
    The trainer holds at most 2 × this per worker (docs/sandbox.md)."""
    max_processes: int = bounded(16, "≥ 2")
    """Processes and threads of one program, the test process included."""
    max_tests: Optional[int] = bounded(None, "≥ 1", "(null = all)")
    """Run at most this many tests per problem (None = all)."""
    float_tol: float = bounded(1e-6, "≥ 0")
    num_workers: Optional[int] = bounded(None, "≥ 1", "(null = number of cores)")
    """Programs run in parallel (None = number of cores)."""
    isolation: str = one_of(code.ISOLATIONS, "auto")
    """auto | namespace (pid/net/mount namespaces, chroot, unprivileged uids) | process (NOT contained:
    rlimits and seccomp only). docs/sandbox.md says what a program can reach in each."""
    judge_timeout: float = bounded(5.0, "> 0")
    """Seconds the trainer may spend comparing one program's output with the expected one; past it
    the program scores as wrong on every test and ``code/judge_timeout`` counts it."""


@dataclass
class JudgeRewardConfig(RewardConfig):
    """A generative judge model: soft reward P(YES) from one forward pass (docs/algorithms.md §7)."""

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
    normalize: str = one_of(classifier.NORMALIZE, "none")
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
    normalize: str = one_of(combined.NORMALIZE, "none")
    """none: the weighted sum of raw scores | then_sum (GDPO): each component normalised within its
    prompt's group of responses (mean/std, zero spread → 0) before the weighted sum; algo=grpo or ppo
    with train.samples_per_prompt ≥ 2. Per-component means are logged as reward/<label>."""
    sum_normalize: str = one_of(combined.SUM_NORMALIZE, "batch")
    """With normalize=then_sum, what normalises the weighted sum: batch (the GDPO paper) — over the
    step's whole batch across ranks, (S − mean)/(std + algo.adv_eps) per response, and that is the
    advantage (GRPO's group step is not applied again; needs algo.adv_estimator=grpo; with ppo it is
    the score GAE takes) | group — the sum is the score of the usual advantage step (adv_estimator=grpo
    normalises it again within each group; ppo takes the raw sum): rltrain before issue 31."""


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
    """0 = addition up to 20 + 20 (400 questions: lower n_train); 1 = two-digit addition; 2 = 3-digit ±;
    3 = three terms; 4 = with a product; 5 = word problems."""
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
    dtype: str = one_of(("auto", "bf16", "fp32"), "auto")
    """Compute dtype: auto (bf16 on a GPU that runs it natively and on a CPU whose matmul probe finds
    bf16 faster, else fp32; see engine/model.py:choose_dtype) | bf16 (fp32 master weights kept for the
    optimizer) | fp32."""
    gradient_checkpointing: bool = False
    tiny_hidden_size: int = 64
    tiny_layers: int = 2
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class DeepSpeedConfig:
    """DeepSpeed ZeRO stage (``deepspeed=...``)."""

    name: str = "none"
    """none | zero1 | zero2 | zero3 | zero3_offload."""
    stage: int = one_of((0, 1, 2, 3), 0)
    offload_optimizer: bool = False
    offload_params: bool = False


# --------------------------------------------------------------------------- shared sections


@dataclass
class TrainConfig:
    """Optimisation and global batch semantics (docs/architecture.md: per iteration, across all ranks)."""

    steps: int = bounded(10, "≥ 1")
    """Optimizer iterations (rollout batches)."""
    time_budget_s: float = bounded(0.0, "≥ 0", "(0 = no budget)")
    """Stop early once the summed step time (evaluation excluded) reaches this many seconds; the
    run then evaluates and checkpoints as after its last step. 0 = off. For equal-wall-time
    comparisons; the learning-rate schedule still spans ``steps``."""
    prompts_per_step: int = bounded(8, "≥ 1")
    samples_per_prompt: int = bounded(8, "≥ 1")
    minibatches_per_step: int = bounded(1, "≥ 1")
    """Optimizer steps per rollout batch."""
    epochs: int = bounded(1, "≥ 1")
    """Passes over each rollout batch."""
    micro_batch_size: int = bounded(16, "≥ 1")
    """Sequences per forward pass per rank (memory knob; does not change the loss)."""
    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    lr_schedule: str = one_of(("constant", "linear", "cosine"), "constant")
    """constant | linear | cosine (after warmup)."""
    max_grad_norm: float = 1.0

    @property
    def total_optimizer_steps(self) -> int:
        """Optimizer steps of a policy-gradient run: one per minibatch per epoch of every step (the
        learning-rate schedule's length)."""
        return self.steps * self.minibatches_per_step * self.epochs


@dataclass
class RolloutConfig:
    """Sampling."""

    @property
    def scoring_temperature(self) -> float:
        """The temperature the trainer takes log-probs at: the sampling temperature, or 1 when sampling
        is greedy (temperature 0), so the log-probs are the policy's own."""
        return self.temperature or 1.0

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_strings: list[str] = field(default_factory=list)
    correction: str = one_of(CORRECTION_MODES, "none")
    """Rollout↔trainer mismatch correction of the policy-gradient loss (docs/algorithms.md §10): none |
    tis (token weight min(ρ, C)) | icepop (masked importance sampling: token weight ρ inside
    [correction_icepop_low, correction_icepop_high], 0 outside) | seq_mask (drop sequences whose
    geometric-mean ρ leaves [correction_seq_low, correction_seq_high]); ρ = π_trainer/π_rollout of the
    sampled token. Off by default: both are fp32 computations on a CPU."""
    correction_c: float = bounded(2.0, "> 1")
    """C of tis (> 1)."""
    correction_icepop_low: float = 0.5
    """icepop: tokens with ρ below this get weight 0 (the reference band 0.5 … 5; 0 < low < 1)."""
    correction_icepop_high: float = 5.0
    """icepop: tokens with ρ above this get weight 0 (> 1)."""
    correction_seq_low: float = 0.5
    correction_seq_high: float = 2.0
    engine: str = one_of(("rltrain", "vllm"), "rltrain")
    """Sampling engine of the training rollouts (docs/vllm.md): rltrain (its own KV-cached engine) | vllm
    (colocated in the trainer's process, the policy's weights pushed into it after every optimizer step;
    needs vLLM installed: ``make vllm``, then ``.venv-vllm/bin/rltrain``). Samples the training rollouts of
    algo=grpo, opd, ppo, spo_chain (and its Monte-Carlo continuations) and iterative dpo, and the held-out
    evaluations, one engine per rank (ZeRO-3: pushed one gathered parameter at a time); not spo_tree, sft,
    offline dpo or an env other than single_turn."""
    vllm_kv_cache_gb: float = bounded(1.0, "> 0")
    """vllm: memory (GiB, CPU or GPU) vLLM reserves for its KV cache beside the trainer; its share of
    the machine is this plus one copy of the weights."""


@dataclass
class EvalConfig:
    """Evaluation on the test split: greedy by default; ``n`` > 1 samples per question adds
    mean@n, pass@k and maj@k (``loops.lifecycle.evaluate``, ``algos.passk``)."""

    every: int = 0
    """Evaluate every N steps (0 = only at start and end)."""
    size: int = 200
    max_new_tokens: int = 64
    at_start: bool = True
    cache_base: bool = True
    """Reuse the untrained model's evaluation from the cache dir when the weights, questions and
    settings are the same (``loops.eval_cache``); the log says when it is used."""
    n: int = 1
    """Samples per question (≥ 1). 1 = one answer each (greedy at temperature 0: the default
    evaluation); > 1 needs temperature > 0 and logs mean@n, pass@k and maj@k, and then
    ``accuracy`` (like ``score`` and ``length``) is the mean over all samples, i.e. mean@n."""
    temperature: float = 0.0
    """Sampling temperature of the evaluation (≥ 0; 0 = greedy), independent of rollout.temperature."""
    top_p: float = 1.0
    """Nucleus mass of the evaluation's sampling, in (0, 1]; 1 = off."""
    k: list[int] = field(default_factory=lambda: [1])
    """With n > 1: report pass@k and maj@k for each k here (each 1 ≤ k ≤ n), e.g. [1, 4, 8]."""
    seed: int = 0
    """Seed of the evaluation's sampling: question i's samples come from streams seeded by (this,
    i) alone, the same at every evaluation, for every run seed and on any number of ranks."""


@dataclass
class CheckpointConfig:
    every: int = 0
    """Save every N steps (0 = only at the end)."""
    keep: int = 2
    """Complete checkpoints kept (older ones are deleted)."""
    save_final: bool = True


@dataclass
class LaunchConfig:
    nproc_per_node: int = bounded(1, "≥ 1")
    """Local worker processes (torch.distributed: gloo on CPU, nccl on GPU)."""
    threads_per_rank: int = 0
    """OMP/torch threads per rank; 0 = usable cores (CPU affinity, cgroup quota) / ranks
    (rltrain/threads.py)."""
    timeout_s: int = 600
    """A rank that stops answering makes the job exit after this many seconds."""
    keep_freed_memory: bool = True
    """Keep freed memory in each worker for reuse instead of returning it to the OS (glibc malloc
    settings, ``launch.keep_freed_memory``): re-faulting the pages of each step's large tensors
    cost 5–10% of an update's wall time on a 2-core CPU. A worker then holds its peak memory until
    it exits."""


@dataclass
class LogConfig:
    """What a run records besides metrics.jsonl (always written): experiment trackers and
    samples.jsonl (docs/logging.md)."""

    console: bool = True
    """Rich live display (falls back to plain lines when not a terminal)."""
    trackers: list[str] = field(default_factory=list)
    """Experiment trackers fed alongside metrics.jsonl: any of tensorboard, wandb, trackio, mlflow
    (``rltrain.report.trackers``), each installed with its extra (``pip install 'rltrain[wandb]'``). They
    get the resolved config, every step's metrics, the evaluation events, the samples (as tables) and
    the summary. A tracker that fails (not installed, unreachable, raising) is dropped with one warning
    line; the run goes on."""
    project: str = "rltrain"
    """The W&B and Trackio project, the MLflow experiment."""
    run_name: Optional[str] = None
    """The run's name in the trackers; None = the run directory."""
    samples_per_step: int = bounded(16, "≥ 0", "(0 = none)")
    """Rollouts per training step written to samples.jsonl (prompt, completion, reward and its info,
    advantage, length): the first of rank 0's batch, so whole groups when a multiple of
    train.samples_per_prompt (the prompts are in random order)."""
    eval_samples: int = bounded(32, "≥ 0", "(0 = none)")
    """Answers per held-out evaluation written to samples.jsonl (question, reference, answer, verdict);
    an initial evaluation read from the cache (eval.cache_base) has none."""
    samples_max_mb: float = bounded(100.0, "> 0")
    """samples.jsonl stops growing at this size (a warning says when); any text longer than 8,000
    characters in it is cut."""


# --------------------------------------------------------------------------- reasoning-gym


@dataclass
class ReasoningGymDataConfig(DataConfig):
    """Procedural tasks of the reasoning-gym package, offline (rltrain/data/reasoning_gym.py)."""

    name: str = "reasoning_gym"
    tasks: list[Any] = field(default_factory=lambda: ["chain_sum"])
    """Task names, or {name, weight, config} entries (config: the task's own generator options)."""
    size: int = 1000
    """Training items, split over the tasks by weight."""
    n_test: int = 100
    """Held-out items per task (never in training)."""
    seed: int = 0
    instruction: str = "Put the final answer alone between <answer> and </answer>."
    """Appended to every question; the reward reads the last <answer>…</answer>."""


@dataclass
class ReasoningGymRewardConfig(RewardConfig):
    """The task's own scorer on the <answer> of a data=reasoning_gym completion."""

    name: str = "reasoning_gym"
    binarize: bool = False
    """1 for a task score of 1, else 0; false: the task's score, partial credit included (logged either way)."""


# --------------------------------------------------------------------------- env


@dataclass
class EnvConfig:
    """Environment (``env=...``, docs/environments.md): ``single_turn`` is one prompt → one response;
    any other option plays multi-turn episodes with tools (``rltrain.envs``, ``rltrain.rollout.multiturn``)."""

    name: str = "single_turn"
    """single_turn | calculator | python_tool | reasoning_gym | python (a class of yours: env.cls)."""
    max_turns: int = bounded(4, "≥ 1")
    """Assistant turns per episode."""
    max_episode_tokens: int = bounded(512, "≥ 1")
    """Tokens per episode after the first prompt, the model's and the environment's together."""
    max_tool_output_tokens: int = bounded(256, "≥ 8")
    """An environment message longer than this is cut in the middle, and says so."""
    max_tool_output_chars: int = bounded(20000, "≥ 100")
    """A tool's printed text and return value are cut in the middle to this many characters in the tool's
    process, before anything is tokenised (a tool that prints 10 MB sends back at most this)."""
    max_invalid_tool_calls: int = bounded(2, "≥ 0")
    """The episode ends after more malformed or unknown tool calls than this."""
    tool_timeout_s: float = bounded(5.0, "> 0")
    """A tool call running longer is stopped and the model told so."""


@dataclass
class CalculatorEnvConfig(EnvConfig):
    name: str = "calculator"


@dataclass
class PythonToolEnvConfig(EnvConfig):
    """The model's Python code run in the code sandbox (rltrain/envs/python_tool.py)."""

    name: str = "python_tool"
    isolation: str = one_of(code.ISOLATIONS, "auto")
    """As reward.isolation: auto | namespace (a jail, or no start) | process (NOT contained, said once)."""
    memory_mb: int = bounded(1024, "≥ 64")
    """Address space of each process of one call of the code (RLIMIT_AS)."""


@dataclass
class ReasoningGymEnvConfig(EnvConfig):
    """reasoning-gym tasks as episodes (rltrain/envs/reasoning_gym.py); needs data=reasoning_gym."""

    name: str = "reasoning_gym"
    retries: int = bounded(1, "≥ 0")
    """Turns in which an answer without <answer> tags is sent back as not read (each uses one of env.max_turns)."""


@dataclass
class PythonEnvConfig(EnvConfig):
    """A class of yours (``rltrain.envs.base`` describes it)."""

    name: str = "python"
    cls: str = MISSING
    """Import path ``module:Class``, looked up in the directory rltrain was started in first."""


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
    env: EnvConfig = field(default_factory=EnvConfig)
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
