"""Cross-field rules and range checks, run once at start (``validate``); every message names the keys."""
from __future__ import annotations

from dataclasses import fields, is_dataclass

from rltrain.algos.correction import CORRECTION_MODES
from rltrain.algos.grpo import ADV_ESTIMATORS
from rltrain.algos.pg_losses import GSPO_LEVELS
from rltrain.config.algo import *  # noqa: F403
from rltrain.config.errors import ConfigError
from rltrain.config.options import OPTIONS, _check_registries, _choice
from rltrain.config.schemas import *  # noqa: F403


# --------------------------------------------------------------------------- validation


def schema_keys(schema) -> list[str]:
    """Field names of a dataclass schema (used in error messages)."""
    return [f.name for f in fields(schema)] if is_dataclass(schema) else []


def validate(cfg: RunConfig, world_size: int = 1) -> None:
    """Check the rules that span fields; raise ConfigError naming the keys and numbers."""
    t, a = cfg.train, cfg.algo
    from rltrain.algos.core import AGGREGATION_MODES, KL_KINDS

    _check_registries()
    for group in OPTIONS:
        _choice(f"{group}.name", getattr(cfg, group).name, list(OPTIONS[group]))
    if type(a) is not OPTIONS["algo"][a.name]:
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
    r = cfg.rollout
    _choice("rollout.correction", r.correction, list(CORRECTION_MODES))
    if r.correction_c <= 1:
        raise ConfigError(f"rollout.correction_c={r.correction_c} must be > 1")
    if not 0 < r.correction_seq_low < 1 < r.correction_seq_high:
        raise ConfigError(f"rollout.correction_seq_low/high=[{r.correction_seq_low}, {r.correction_seq_high}] must "
                          "satisfy 0 < low < 1 < high")
    if hasattr(pl, "level"):
        _choice("policy_loss.level", pl.level, list(GSPO_LEVELS))
    for key in ("tau_pos", "tau_neg"):
        if hasattr(pl, key) and getattr(pl, key) <= 0:
            raise ConfigError(f"policy_loss.{key}={getattr(pl, key)} must be > 0")
    if isinstance(cfg.token_selection, ProbMaskConfig) and not 0 < cfg.token_selection.threshold <= 1:
        raise ConfigError(f"token_selection.threshold={cfg.token_selection.threshold} must be in (0, 1]")
    for group in ("token_selection", "policy_loss"):
        node = getattr(cfg, group)
        if hasattr(node, "normalize"):
            _choice(f"{group}.normalize", node.normalize, ["all", "selected"])
        if hasattr(node, "scope"):
            _choice(f"{group}.scope", node.scope, ["batch", "micro_batch"])
    _choice("model.dtype", cfg.model.dtype, ["auto", "bf16", "fp32"])
    if hasattr(cfg.reward, "normalize"):
        from rltrain.rewards.combined import NORMALIZE

        _choice("reward.normalize", cfg.reward.normalize, list(NORMALIZE))
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
    ev = cfg.eval
    if ev.n < 1:
        raise ConfigError(f"eval.n={ev.n} must be ≥ 1 (samples per question)")
    if ev.temperature < 0:
        raise ConfigError(f"eval.temperature={ev.temperature} must be ≥ 0 (0 = greedy)")
    if not 0 < ev.top_p <= 1:
        raise ConfigError(f"eval.top_p={ev.top_p} must be in (0, 1]")
    if ev.n > 1 and ev.temperature == 0:
        raise ConfigError(f"eval.n={ev.n} samples per question need eval.temperature > 0, got "
                          f"eval.temperature={ev.temperature} (greedy decoding answers each question the same way "
                          f"{ev.n} times)")
    if any(k < 1 or k > ev.n for k in ev.k):
        raise ConfigError(f"eval.k={list(ev.k)}: every k must satisfy 1 ≤ k ≤ eval.n={ev.n}")
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
        _choice("algo.adv_whiten", a.adv_whiten, ["batch", "none"])
        _choice("algo.adv_estimator", a.adv_estimator, list(ADV_ESTIMATORS))
        if a.adv_estimator in ("rloo", "reinforce_pp_baseline") and t.samples_per_prompt < 2:
            raise ConfigError(f"algo.adv_estimator={a.adv_estimator} needs train.samples_per_prompt ≥ 2 (a baseline "
                              "from the prompt's other responses)")
        _choice("algo.std_ddof", str(a.std_ddof), ["0", "1"])
        if t.samples_per_prompt < 2 and a.adv_scale == "std" and a.adv_estimator == "grpo":
            raise ConfigError(f"algo={a.name} needs train.samples_per_prompt ≥ 2 (group-normalised advantages)")
    if isinstance(a, OPDConfig) and a.reward_weight < 0:
        raise ConfigError(f"algo.reward_weight={a.reward_weight} must be ≥ 0")
    if getattr(cfg.reward, "normalize", "none") == "then_sum":
        if not isinstance(a, (GRPOConfig, PPOConfig)) or t.samples_per_prompt < 2:
            raise ConfigError("reward.normalize=then_sum (GDPO) normalises each reward component within a prompt's "
                              "group of responses: it needs algo=grpo, opd or ppo with train.samples_per_prompt ≥ 2")
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
        _choice("algo.mask_denominator", a.mask_denominator, ["kept", "all"])
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
