"""Schemas of the algo and policy options: algo=, token_selection=, policy_loss= (a docstring per field)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from rltrain.algos.core import AGGREGATION_MODES, KL_KINDS
from rltrain.algos.dpo import DPO_LOSS_TYPES
from rltrain.algos.grpo import ADV_ESTIMATORS, GROUP_SCALES
from rltrain.algos.pg_losses import GSPO_LEVELS
from rltrain.algos.ppo import VALUE_LOSS_TYPES
from rltrain.algos.registry import SCOPES
from rltrain.algos.select import NORMALIZE_MODES
from rltrain.algos.spo import FIRST_SEGMENT_VALUES, TREE_VARIANTS
from rltrain.config.fields import bounded, one_of

TRUNCATIONS = ("keep_end", "keep_start")  # DPO / SFT prompt truncation (loops/pairs.truncate)


# --------------------------------------------------------------------------- algo


@dataclass
class AlgoConfig:
    """Fields shared by every algorithm option (``algo=...``)."""

    name: str = MISSING
    """Algorithm family: sft | dpo | ppo | grpo | opd | spo_chain | spo_tree."""
    loss_agg_mode: str = one_of(AGGREGATION_MODES, "token-mean")
    """How per-token losses are reduced: token-mean | seq-mean-token-mean | seq-mean-token-sum |
    seq-mean-token-sum-norm (docs/algorithms.md §0)."""
    loss_agg_constant: Optional[float] = None
    """Divisor C of seq-mean-token-sum-norm; None = rollout.max_new_tokens."""
    kl_coef: float = 0.0
    """β of the KL term to the frozen reference; 0 = no reference model is loaded at all."""
    kl_estimator: str = one_of(KL_KINDS, "k3")
    """KL estimator of the KL loss: k1 | k2 | k3 | abs | k3+."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient (loss -= c·agg(H)); 0 = off."""


@dataclass
class GRPOConfig(AlgoConfig):
    """GRPO and its DAPO / Dr. GRPO variants (docs/algorithms.md §3)."""

    name: str = "grpo"
    adv_estimator: str = one_of(ADV_ESTIMATORS, "grpo")
    """grpo (group mean/std, ``adv_scale``) | rloo (leave-one-out baseline, no std scaling) |
    reinforce_pp (REINFORCE++: outcome at the last token − β·k1 KL per token, returns-to-go whitened
    over the global batch; ``kl_coef`` is that β, no KL loss term) | reinforce_pp_baseline (the outcome
    minus its group mean on every token, whitened over the global batch; ``kl_coef`` weights a KL loss
    with ``kl_estimator``, k2 in the authors' recipe). The batch whitening of both is always on (it is
    the estimator's normalisation)."""
    adv_scale: str = one_of(GROUP_SCALES, "std")
    """Group advantage scaling: std (GRPO) | none (Dr. GRPO)."""
    std_ddof: int = one_of((0, 1), 1)
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
    adv_whiten: str = one_of(("batch", "none"), "none")
    """Whiten the group advantages over all valid tokens of the step (across ranks): batch | none.
    ``batch`` is what SPO's code does for its GRPO baseline; use it to compare both under one recipe."""


@dataclass
class OPDConfig(GRPOConfig):
    """On-policy distillation: the student samples and each response token's advantage is the
    negative reverse-KL estimate to a teacher, −(log π_student(y_t) − log π_teacher(y_t)), discount 0
    (docs/algorithms.md §10); optionally plus ``reward_weight`` × the task-reward advantage of the GRPO
    fields below (``adv_estimator`` etc.). The teacher must share the student's tokenizer."""

    name: str = "opd"
    teacher_path: str = MISSING
    """The teacher: a saved Hugging Face causal LM directory or hub id, an rltrain checkpoint
    (``<run>/checkpoints/step_N``) or a run directory (its newest checkpoint)."""
    reward_weight: float = bounded(0.0, "≥ 0")
    """Weight of the task-reward advantage added to the distillation advantage (0 = pure
    distillation: the reward is still computed and logged)."""


@dataclass
class PPOConfig(AlgoConfig):
    """PPO with a critic, with the three tricks of Xu et al. (docs/algorithms.md §2)."""

    name: str = "ppo"
    kl_coef: float = 0.1
    kl_in_reward: bool = True
    """True: k1 KL penalty in the token rewards (PPO style); False: KL loss (kl_estimator)."""
    adaptive_kl: bool = False
    """Adaptive KL controller (target kl_target over kl_horizon samples)."""
    kl_target: float = 6.0
    kl_horizon: int = 10000
    gamma: float = bounded(1.0, "in [0, 1]")
    lam: float = bounded(1.0, "in [0, 1]")
    adv_norm: bool = True
    """Trick 1: whiten advantages over the whole step's batch across ranks."""
    adv_norm_scope: str = one_of(("batch", "per_minibatch"), "batch")
    """batch (across ranks, default) | per_minibatch."""
    ref_ema: float = bounded(0.001, "in [0, 1]")
    """Trick 3: reference ← η·actor + (1−η)·reference after every step; 0 = frozen reference."""
    value_clip: float = 0.2
    """Clip of the value update around the rollout-time values (ReaLHF value_eps_clip); ≤ 0 = off."""
    value_norm: bool = True
    """Running normalisation of value targets (β = 0.99995)."""
    value_loss: str = one_of(VALUE_LOSS_TYPES, "mse")
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
    """Fields shared by SPO chain and tree (Segment Policy Optimization, docs/algorithms.md §4)."""

    name: str = MISSING
    kl_coef: float = 1e-4
    cut_threshold: float = bounded(0.9, "in (0, 1]")
    """Chain: a token with p < threshold is a cutpoint candidate; both: the probability mask's threshold."""
    adv_whiten: str = one_of(("batch", "per_minibatch", "none"), "batch")
    """batch (across ranks) | per_minibatch (SPO code) | none."""
    prob_mask: bool = True
    """SPO's probability mask (docs/algorithms.md §4.4), its one mechanism here: zero the advantage
    of tokens sampled with probability ≥ cut_threshold before the whitening (whose statistics then
    cover the kept tokens only). ``token_selection=prob_mask`` (the same mask as a selection, for the
    other loops) is refused with SPO."""
    mask_denominator: str = one_of(("kept", "all"), "kept")
    """With the probability mask: the loss (and KL) averages over the kept tokens (kept, the official
    code's denominator) or over all valid response tokens (all; a per-step scale of ~0.55-0.6 here)."""


@dataclass
class SPOChainConfig(SPOConfig):
    """SPO-chain: Monte-Carlo values at cut states of each sampled response."""

    name: str = "spo_chain"
    partition: str = one_of(("cutpoint", "fixed"), "cutpoint")
    """cutpoint (low-probability tokens) | fixed (near-equal token chunks)."""
    cut_interval: int = bounded(5, "≥ 1")
    """Keep every k-th candidate."""
    num_segments: int = bounded(4, "≥ 1")
    """partition=fixed: number of chunks."""
    mc_rollouts: int = bounded(4, "≥ 1")
    """Monte-Carlo continuations per cutpoint (K)."""
    first_segment_value: str = one_of(FIRST_SEGMENT_VALUES, "group_mean")
    """group_mean (rltrain default) | zero (official code)."""


@dataclass
class SPOTreeConfig(SPOConfig):
    """SPO-tree: a sampled tree of segments, values from the leaves, edges replayed."""

    name: str = "spo_tree"
    branching: list[int] = field(default_factory=lambda: [6, 6, 6])
    """Branching factor per depth."""
    segment_len: int = bounded(30, "≥ 1")
    """Tokens per segment at non-final depths (M)."""
    tree_adv: str = one_of(TREE_VARIANTS, "rloo")
    """rloo (V(child) − V(parent)) | grpo (divided by the sibling std)."""
    replay_max_age: int = bounded(8, "≥ 0")
    """Drop replayed edges this many steps old; 0 disables edge replay."""
    replay_per_question: int = bounded(32, "≥ 1")
    """Edges drawn per question per step."""


@dataclass
class DPOConfig(AlgoConfig):
    """DPO, IPO, conservative DPO and iterative DPO (docs/algorithms.md §1).

    Offline: ``train.prompts_per_step`` pairs per optimizer step (global). Iterative: ``algo.rounds``
    rounds of ``train.steps / algo.rounds`` steps; each round samples ``train.samples_per_prompt``
    responses for each of its prompts, pairs best vs worst, then trains one pass over those pairs.
    """

    name: str = "dpo"
    beta: float = bounded(0.1, "> 0")
    loss_type: str = one_of(DPO_LOSS_TYPES, "sigmoid")
    """sigmoid (DPO) | ipo."""
    label_smoothing: float = bounded(0.0, "in [0, 0.5)")
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
    truncation: str = one_of(TRUNCATIONS, "keep_end")
    """How the prompt is truncated: keep_end | keep_start."""
    iterative: bool = False
    """Iterative DPO: sample K responses per prompt, pair best vs worst, train, repeat."""
    rounds: int = 3
    """Iterative DPO: number of rounds; train.steps must be a multiple of it."""
    reference: str = one_of(("initial", "previous_iterate"), "initial")
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
    truncation: str = one_of(TRUNCATIONS, "keep_end")
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
    """Top-ρ highest-entropy ("forking") tokens (Beyond the 80/20 rule, docs/algorithms.md §5)."""

    name: str = "high_entropy"
    top_ratio: float = bounded(0.2, "in (0, 1]")
    """Fraction ρ of the batch's valid tokens kept (highest entropy)."""
    normalize: str = one_of(NORMALIZE_MODES, "all")
    """Loss denominator: all response tokens (paper, default) | selected (official code)."""
    scope: str = one_of(SCOPES, "batch")
    """Threshold pool: batch (whole step, across ranks) | micro_batch (official code)."""


@dataclass
class ProbMaskConfig(TokenSelectionConfig):
    """SPO's probability mask as a token selection for the other policy-gradient loops: only tokens
    sampled with probability below the threshold. SPO itself masks with ``algo.prob_mask``."""

    name: str = "prob_mask"
    threshold: float = bounded(0.9, "in (0, 1]")
    normalize: str = one_of(NORMALIZE_MODES, "all")
    """Loss denominator: all response tokens | selected."""


@dataclass
class PolicyLossConfig:
    """Per-token policy loss (``policy_loss=...``). Fields other than ``name`` are exactly the
    loss's options (rltrain/algos/registry.py)."""

    name: str = "clip"
    """clip | clip_cov | kl_cov | gspo | cispo | sapo | gmpo."""


@dataclass
class ClipLossConfig(PolicyLossConfig):
    """PPO clipped surrogate; clip-higher (DAPO) is clip_high=0.28."""

    name: str = "clip"
    clip_low: float = bounded(0.2, "≥ 0")
    """ε_low: the ratio is clipped below at 1 − clip_low."""
    clip_high: float = bounded(0.2, "≥ 0")
    """ε_high: the ratio is clipped above at 1 + clip_high."""
    dual_clip: Optional[float] = bounded(None, "> 1", "(or null = off)")
    """Dual-clip constant c (> 1) capping the loss of negative-advantage tokens; None = off."""


@dataclass
class GSPOConfig(PolicyLossConfig):
    """GSPO (Zheng et al. 2025): sequence-level importance ratio (docs/algorithms.md §10)."""

    name: str = "gspo"
    clip_low: float = bounded(3e-4, "≥ 0")
    """ε_low of the sequence ratio (the paper's 3e-4: sequence ratios stay near 1)."""
    clip_high: float = bounded(4e-4, "≥ 0")
    """ε_high of the sequence ratio (the paper's 4e-4)."""
    level: str = one_of(GSPO_LEVELS, "sequence")
    """sequence (one ratio and advantage per response) | token (GSPO-token: per-token gradient)."""


@dataclass
class CISPOConfig(PolicyLossConfig):
    """CISPO (MiniMax-M1): REINFORCE with a clipped, stop-gradient importance weight."""

    name: str = "cispo"
    clip_low: float = bounded(1.0, "≥ 0")
    """The weight is clipped below at 1 − clip_low (1.0: no lower bound, as MiniMax)."""
    clip_high: float = bounded(4.0, "≥ 0")
    """The weight is clipped above at 1 + clip_high."""


@dataclass
class SAPOConfig(PolicyLossConfig):
    """SAPO: a smooth temperature-controlled gate on the ratio instead of the hard clip."""

    name: str = "sapo"
    tau_pos: float = bounded(1.0, "> 0")
    """Gate temperature for positive advantages."""
    tau_neg: float = bounded(1.05, "> 0")
    """Gate temperature for negative advantages (larger: negatives are damped faster)."""


@dataclass
class GMPOConfig(PolicyLossConfig):
    """GMPO (Zhao et al. 2025): the geometric mean of the token ratios, clipped in log space
    (rltrain/algos/pg_losses.py)."""

    name: str = "gmpo"
    clip_low: float = bounded(0.4, "≥ 0")
    """ε_low: each token's log-ratio is clipped below at −clip_low (the paper's and verl's 0.4)."""
    clip_high: float = bounded(0.4, "≥ 0")
    """ε_high: each token's log-ratio is clipped above at clip_high (0.4)."""


@dataclass
class ClipCovConfig(PolicyLossConfig):
    """Clip-Cov (Cui et al. 2025, docs/algorithms.md §6)."""

    name: str = "clip_cov"
    clip_low: float = bounded(1.0, "≥ 0")
    """PPO clip ε_low (the official scripts use 1, i.e. ratio in [0, 2])."""
    clip_high: float = bounded(1.0, "≥ 0")
    cov_low: float = bounded(1.0, "≥ 0")
    """ω_low: candidates have covariance above this."""
    cov_high: float = bounded(5.0, "≥ 0")
    """ω_high: candidates have covariance below this."""
    select_ratio: float = bounded(2e-4, "in (0, 1]")
    """Fraction r of tokens whose gradient is detached."""
    scope: str = one_of(SCOPES, "batch")
    """Selection pool: batch (whole step, across ranks) | micro_batch (official code)."""


@dataclass
class KLCovConfig(PolicyLossConfig):
    """KL-Cov (Cui et al. 2025, docs/algorithms.md §6)."""

    name: str = "kl_cov"
    select_ratio: float = bounded(2e-4, "in (0, 1]")
    """Fraction of tokens (top by covariance) that get the KL penalty (2e-4 = 0.02%)."""
    kl_coef: float = bounded(1.0, "≥ 0")
    """β of |log π − log π_old| on the selected tokens."""
    scope: str = one_of(SCOPES, "batch")
    """Selection pool: batch (whole step, across ranks) | micro_batch (official code)."""
