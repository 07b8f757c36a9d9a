"""The ONE option table of every config group and what derives from it: the ConfigStore nodes, the
loops map, valid names, the schema of an option and an option's keyword arguments."""
from __future__ import annotations

import dataclasses

from hydra.core.config_store import ConfigStore

from rltrain.config.algo import *  # noqa: F403
from rltrain.config.fields import check_choice
from rltrain.config.schemas import *  # noqa: F403


# ONE option table: every config-group option by name and its schema. The ConfigStore nodes
# (``<option>_schema``, what conf/<group>/<option>.yaml extends), the valid names in errors and the
# schema used to reload a config.yaml all derive from it. The token_selection and policy_loss rows are
# the algos registries themselves (``config.algo.registered_schemas``).
OPTIONS: dict[str, dict[str, type]] = {
    "algo": {"grpo": GRPOConfig, "opd": OPDConfig, "ppo": PPOConfig, "spo_chain": SPOChainConfig, "spo_tree": SPOTreeConfig,
             "dpo": DPOConfig, "sft": SFTConfig},
    "token_selection": TOKEN_SELECTION_SCHEMAS,  # derived from the registered selectors (algos/select.py)
    "policy_loss": POLICY_LOSS_SCHEMAS,  # derived from the registered losses (algos/ppo.py, entropy.py, pg_losses.py)
    "reward": {"math": MathRewardConfig, "python": PythonRewardConfig, "code": CodeRewardConfig,
               "judge": JudgeRewardConfig, "classifier": ClassifierRewardConfig, "combined": CombinedRewardConfig, "reasoning_gym": ReasoningGymRewardConfig},
    "data": {"arith": ArithDataConfig, "synthetic_prefs": SyntheticPrefsConfig, "gsm8k": GSM8KDataConfig,
             "math": MathDataConfig, "preference": PreferenceDataConfig, "apps": AppsDataConfig,
             "qa": QADataConfig, "reasoning_gym": ReasoningGymDataConfig},
    "env": {"single_turn": EnvConfig, "calculator": CalculatorEnvConfig, "python_tool": PythonToolEnvConfig,
            "reasoning_gym": ReasoningGymEnvConfig, "python": PythonEnvConfig},
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
