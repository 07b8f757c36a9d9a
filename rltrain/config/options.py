"""The ONE option table of every config group and what derives from it: the ConfigStore nodes, the
loops map, valid names, the schema of an option and an option's keyword arguments."""
from __future__ import annotations

import dataclasses

from hydra.core.config_store import ConfigStore

from rltrain.config.algo import *  # noqa: F403
from rltrain.config.errors import ConfigError
from rltrain.config.fields import check_choice
from rltrain.config.schemas import *  # noqa: F403


# ONE option table: every config-group option by name and its schema. The ConfigStore nodes
# (``<option>_schema``, what conf/<group>/<option>.yaml extends), the valid names in errors and the
# schema used to reload a config.yaml all derive from it; registries are checked against it below.
OPTIONS: dict[str, dict[str, type]] = {
    "algo": {"grpo": GRPOConfig, "opd": OPDConfig, "ppo": PPOConfig, "spo_chain": SPOChainConfig, "spo_tree": SPOTreeConfig,
             "dpo": DPOConfig, "sft": SFTConfig},
    "token_selection": {"all": TokenSelectionConfig, "high_entropy": HighEntropyConfig, "prob_mask": ProbMaskConfig},
    "policy_loss": {"clip": ClipLossConfig, "clip_cov": ClipCovConfig, "kl_cov": KLCovConfig, "gspo": GSPOConfig,
                    "cispo": CISPOConfig, "sapo": SAPOConfig, "gmpo": GMPOConfig},
    "reward": {"math": MathRewardConfig, "python": PythonRewardConfig, "code": CodeRewardConfig,
               "judge": JudgeRewardConfig, "classifier": ClassifierRewardConfig, "combined": CombinedRewardConfig, "reasoning_gym": ReasoningGymRewardConfig},
    "data": {"arith": ArithDataConfig, "synthetic_prefs": SyntheticPrefsConfig, "gsm8k": GSM8KDataConfig,
             "math": MathDataConfig, "preference": PreferenceDataConfig, "apps": AppsDataConfig,
             "qa": QADataConfig, "reasoning_gym": ReasoningGymDataConfig},
    "env": {"single_turn": EnvConfig, "calculator": CalculatorEnvConfig, "python": PythonEnvConfig},
}
# Groups with one schema for every option (the option only sets values).
SINGLE_SCHEMA: dict[str, type] = {"model": ModelConfig, "deepspeed": DeepSpeedConfig}

# The training loop of each algo option.
LOOPS: dict[str, str] = {
    "grpo": "rltrain.loops.grpo:train",
    "opd": "rltrain.loops.opd:train",
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
    check_choice(f"{group}.name", name, list(OPTIONS[group]))
    return OPTIONS[group][name]
