"""Schemas of the algo and policy options: algo= (a docstring per field), token_selection= and
policy_loss= (derived from the registered functions, whose docstrings document each option)."""
from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, make_dataclass
from typing import Optional

from omegaconf import MISSING

from rltrain.algos.core import AGGREGATION_MODES, KL_KINDS
from rltrain.algos.dpo import DPO_LOSS_TYPES
from rltrain.algos import registry
from rltrain.algos.grpo import GROUP_SCALES
from rltrain.algos.ppo import VALUE_LOSS_TYPES
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
    adv_estimator: str = one_of(registry.ADV_ESTIMATORS, "grpo")
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
    """Which response tokens receive policy gradient (``token_selection=...``). Each option's schema is
    derived from its registered selector (``registered_schemas``): the fields other than ``name`` are
    exactly the selector's keyword options, documented, defaulted and checked there
    (``@register_token_selection`` in rltrain/algos/select.py)."""

    name: str = "all"
    """A registered token selector: all | high_entropy | prob_mask."""


@dataclass
class PolicyLossConfig:
    """Per-token policy loss (``policy_loss=...``). Each option's schema is derived from its registered
    loss (``registered_schemas``): the fields other than ``name`` are exactly the loss's keyword
    options, documented, defaulted and checked there (``@register_policy_loss`` in
    rltrain/algos/ppo.py, entropy.py, pg_losses.py)."""

    name: str = "clip"
    """A registered policy loss: clip | clip_cov | kl_cov | gspo | cispo | sapo | gmpo."""


def _field_type(hint):
    """``X | None`` as ``Optional[X]`` (what OmegaConf reads)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return Optional[inner]
    return hint


def registered_schemas(base: type, entries) -> dict[str, type]:
    """One schema per registered entry, ``name → dataclass``: ``base`` plus the entry's keyword
    options as fields, with the function's defaults and the entry's ``checks`` (a range for
    ``bounded``, a tuple of values for ``one_of``). The ConfigStore node ``<name>_schema`` that
    ``conf/<group>/<name>.yaml`` extends is this class, so a new entry needs no schema of its own."""
    out = {}
    for name, entry in entries.items():
        fields = [("name", str, field(default=name))]
        for opt, (hint, default) in registry.options(entry.fn).items():
            check = entry.checks.get(opt)
            f = (one_of(check, default) if isinstance(check, tuple) else bounded(default, check) if check
                 else field(default=default))
            fields.append((opt, _field_type(hint), f))
        title = "".join(w.title() for w in name.split("_")) + base.__name__
        schema = make_dataclass(title, fields, bases=(base,))
        schema.__module__ = __name__
        schema.__doc__ = f"``{name}``: the keyword options of {entry.fn.__module__}.{entry.fn.__qualname__}."
        globals()[title] = schema  # importable by name (pickling a config for the workers)
        out[name] = schema
    return out


TOKEN_SELECTION_SCHEMAS = registered_schemas(TokenSelectionConfig, registry.TOKEN_SELECTORS)
POLICY_LOSS_SCHEMAS = registered_schemas(PolicyLossConfig, registry.POLICY_LOSSES)
