"""``validate``: every field's own check (choices and ranges, next to the fields), then the rules that span
fields, run once at start; every message names the keys."""
from __future__ import annotations

from dataclasses import fields, is_dataclass

from rltrain.config.algo import *  # noqa: F403
from rltrain.config.errors import ConfigError
from rltrain.config.fields import check_choice, check_fields
from rltrain.config.options import OPTIONS
from rltrain.config.schemas import *  # noqa: F403
from rltrain.report.trackers import TRACKERS
from rltrain.rollout.engine import SamplingParams


# --------------------------------------------------------------------------- validation


def schema_keys(schema) -> list[str]:
    """Field names of a dataclass schema (used in error messages)."""
    return [f.name for f in fields(schema)] if is_dataclass(schema) else []


def _check_sampling(section: str, **settings) -> None:
    """``rollout.*`` / ``eval.*`` sampling settings, checked by ``SamplingParams`` itself (the one
    place their ranges are written); the message names the key."""
    for name, value in settings.items():  # one at a time: the error belongs to this key
        try:
            SamplingParams(**{"max_new_tokens": 1, name: value})
        except ValueError as err:
            raise ConfigError(f"{section}.{name}={value} is out of range ({err})") from None


def validate(cfg: RunConfig, world_size: int = 1) -> None:
    """Check every field's own rule (``fields.check_fields``: choices and ranges written next to the
    fields), then the rules that span fields; raise ConfigError naming the keys and numbers."""
    t, a = cfg.train, cfg.algo

    for group in OPTIONS:
        check_choice(f"{group}.name", getattr(cfg, group).name, list(OPTIONS[group]))
    if type(a) is not OPTIONS["algo"][a.name]:
        raise ConfigError(f"algo.name={a.name!r} does not match its schema {type(a).__name__}: pick the option "
                          f"with algo={a.name}, not algo.name={a.name}")
    check_fields(cfg, "")
    pl = cfg.policy_loss
    if pl.name == "clip_cov" and pl.cov_low > pl.cov_high:
        raise ConfigError(f"policy_loss.cov_low={pl.cov_low} must be ≤ policy_loss.cov_high={pl.cov_high}")
    r = cfg.rollout
    if not 0 < r.correction_icepop_low < 1 < r.correction_icepop_high:
        raise ConfigError(f"rollout.correction_icepop_low/high=[{r.correction_icepop_low}, {r.correction_icepop_high}] "
                          "must satisfy 0 < low < 1 < high")
    if not 0 < r.correction_seq_low < 1 < r.correction_seq_high:
        raise ConfigError(f"rollout.correction_seq_low/high=[{r.correction_seq_low}, {r.correction_seq_high}] must "
                          "satisfy 0 < low < 1 < high")
    _check_sampling("rollout", max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                    top_k=r.top_k)
    ev = cfg.eval
    _check_sampling("eval", max_new_tokens=ev.max_new_tokens, temperature=ev.temperature, top_p=ev.top_p, n=ev.n)
    lora = cfg.model.lora
    if lora.r < 0 or (lora.r > 0 and (lora.alpha <= 0 or not 0 <= lora.dropout < 1 or not lora.target_modules)):
        raise ConfigError(f"model.lora: r={lora.r} must be ≥ 0 (0 = off); with r > 0, alpha={lora.alpha} must be "
                          f"> 0, dropout={lora.dropout} in [0, 1) and target_modules non-empty")
    if ev.n > 1 and ev.temperature == 0:
        raise ConfigError(f"eval.n={ev.n} samples per question need eval.temperature > 0, got "
                          f"eval.temperature={ev.temperature} (greedy decoding answers each question the same way "
                          f"{ev.n} times)")
    if any(k < 1 or k > ev.n for k in ev.k):
        raise ConfigError(f"eval.k={list(ev.k)}: every k must satisfy 1 ≤ k ≤ eval.n={ev.n}")
    for name in cfg.log.trackers:  # the registry's names (a tracker's package is imported only when it starts)
        check_choice("log.trackers", name, sorted(TRACKERS))
    if len(set(cfg.log.trackers)) < len(cfg.log.trackers):
        raise ConfigError(f"log.trackers={list(cfg.log.trackers)} names a tracker twice")

    if a.name in ("grpo", "opd", "ppo", "spo_chain"):
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
        if a.adv_estimator in ("rloo", "reinforce_pp_baseline") and t.samples_per_prompt < 2:
            raise ConfigError(f"algo.adv_estimator={a.adv_estimator} needs train.samples_per_prompt ≥ 2 (a baseline "
                              "from the prompt's other responses)")
        if t.samples_per_prompt < 2 and a.adv_scale == "std" and a.adv_estimator == "grpo":
            raise ConfigError(f"algo={a.name} needs train.samples_per_prompt ≥ 2 (group-normalised advantages)")
    if cfg.rollout.engine == "vllm":  # the loops that sample through it (docs/vllm.md)
        why_not = {"spo_tree": "samples its trees with rltrain's engine (a node's KV cache shared by its children)",
                   "sft": "samples nothing (it trains on fixed examples)",
                   "dpo": "samples nothing without algo.iterative=true (offline pairs)"}
        if a.name in why_not and not (a.name == "dpo" and a.iterative):
            raise ConfigError(f"rollout.engine=vllm: algo={a.name} {why_not[a.name]}; use rollout.engine=rltrain")
        if cfg.env.name != "single_turn":
            raise ConfigError(f"rollout.engine=vllm samples single-turn responses only, not env={cfg.env.name}'s "
                              "multi-turn episodes; use rollout.engine=rltrain")
    if cfg.env.name != "single_turn" and a.name not in ("grpo", "opd"):  # episodes: rollout.multiturn
        raise ConfigError(f"env={cfg.env.name} (multi-turn episodes) is wired into algo=grpo and algo=opd only, not "
                          f"algo={a.name}; use env=single_turn")
    if cfg.env.name == "reasoning_gym":  # its episodes are reasoning-gym items (rltrain/envs/reasoning_gym.py)
        if cfg.data.name != "reasoning_gym":
            raise ConfigError(f"env=reasoning_gym plays reasoning-gym tasks: it needs data=reasoning_gym, "
                              f"not data={cfg.data.name}")
        if cfg.env.retries >= cfg.env.max_turns:
            raise ConfigError(f"env.retries={cfg.env.retries} needs env.max_turns ≥ {cfg.env.retries + 1} (each retry "
                              f"is one more turn), got env.max_turns={cfg.env.max_turns}")
    if isinstance(cfg.reward, CombinedRewardConfig) and cfg.reward.normalize == "then_sum":
        if not isinstance(a, (GRPOConfig, PPOConfig)) or t.samples_per_prompt < 2:
            raise ConfigError("reward.normalize=then_sum (GDPO) normalises each reward component within a prompt's "
                              "group of responses: it needs algo=grpo, opd or ppo with train.samples_per_prompt ≥ 2")
        if cfg.reward.sum_normalize == "batch" and isinstance(a, GRPOConfig) and a.adv_estimator != "grpo":
            raise ConfigError(f"reward.sum_normalize=batch (GDPO) makes the batch-normalised sum the advantage in place "
                              f"of algo.adv_estimator=grpo's group step; with algo.adv_estimator={a.adv_estimator} set "
                              f"reward.sum_normalize=group (the sum is then {a.adv_estimator}'s score)")
    if isinstance(a, PPOConfig):
        if a.adaptive_kl and not a.kl_in_reward:
            raise ConfigError("algo.adaptive_kl=true adapts the KL penalty in the reward; it needs "
                              "algo.kl_in_reward=true (the KL loss uses the fixed algo.kl_coef)")
        if a.adaptive_kl and a.kl_coef <= 0:
            raise ConfigError("algo.adaptive_kl=true needs an initial algo.kl_coef > 0")
    if isinstance(a, (DPOConfig, SFTConfig)):
        if not 0 < a.max_prompt_length < a.max_length:
            raise ConfigError(
                f"algo.max_prompt_length={a.max_prompt_length} must be in (0, algo.max_length={a.max_length})")
        if t.prompts_per_step % world_size:
            raise ConfigError(f"train.prompts_per_step={t.prompts_per_step} examples per step must divide "
                              f"evenly over {world_size} ranks")
    if isinstance(a, SPOConfig) and cfg.token_selection.name == "prob_mask":
        raise ConfigError(f"token_selection=prob_mask with algo={a.name} would mask twice: SPO applies its own "
                          "probability mask before whitening (algo.prob_mask=true, threshold algo.cut_threshold, "
                          "denominator algo.mask_denominator); keep token_selection=all (or high_entropy)")
    if isinstance(a, SPOTreeConfig):
        if not a.branching or any(b < 1 for b in a.branching):
            raise ConfigError(f"algo.branching={list(a.branching)} must be positive integers")
    if isinstance(a, DPOConfig):
        if a.loss_type == "ipo" and a.label_smoothing:
            raise ConfigError("algo.label_smoothing applies to algo.loss_type=sigmoid only")
        if a.iterative:
            if a.rounds < 1 or t.steps % a.rounds:
                raise ConfigError(f"algo.iterative=true: train.steps={t.steps} must be a positive multiple of "
                                  f"algo.rounds={a.rounds} (each round trains train.steps / algo.rounds steps)")
            if t.samples_per_prompt < 2:
                raise ConfigError("algo.iterative=true needs train.samples_per_prompt ≥ 2 "
                                  "(best and worst of the sampled responses form a pair)")
