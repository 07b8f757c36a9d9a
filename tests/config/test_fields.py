"""Choices and ranges written next to the fields (``rltrain/config/fields.py``): every such field of
every option fails validation with a message naming its key; the valid names come from one place."""
import dataclasses

import pytest

from rltrain.algos import core, correction, select
from rltrain.cli import compose_or_explain, to_run_config
from rltrain.config import (OPTIONS, SINGLE_SCHEMA, ConfigError, GRPOConfig, RunConfig,
                            SPOChainConfig, SPOConfig, register_configs, validate)
from rltrain.config.fields import bounded, holds, one_of

register_configs()

EXTRA = {("algo", "opd"): ["algo.teacher_path=t"], ("reward", "python"): ["reward.fn=tests.toy_rewards:sevens"],
         ("reward", "classifier"): ["reward.model_path=m"], ("env", "python"): ["env.cls=my_env:Calculator"]}


def _violation(rule: str, kind: type):
    """A value just outside ``rule`` (the grammar of ``bounded``)."""
    if rule.startswith("in "):
        low, high = (float(x) for x in rule[4:-1].split(","))
        value = low if rule[3] == "(" else (high if rule[-1] == ")" else high + 1)
    else:
        op, bound = rule.split(" ")
        value = {"≥": float(bound) - 1, ">": float(bound), "≤": float(bound) + 1, "<": float(bound)}[op]
    return int(value) if kind is int and value == int(value) else value


def _checked_fields():
    """(overrides selecting the option, key, bad value) for every one_of / bounded field."""
    nodes = [(g, name, schema) for g, opts in OPTIONS.items() for name, schema in opts.items()]
    nodes += [(g, None, schema) for g, schema in SINGLE_SCHEMA.items()]
    nodes += [(f.name, None, f.default_factory) for f in dataclasses.fields(RunConfig)
              if f.name not in OPTIONS and f.name not in SINGLE_SCHEMA and callable(f.default_factory)]
    for group, name, schema in nodes:
        base = ([f"{group}={name}"] + EXTRA.get((group, name), [])) if name else []
        for f in dataclasses.fields(schema):
            if "choices" in f.metadata:
                bad = 7 if isinstance(f.metadata["choices"][0], int) else "not_a_choice"
            elif "range" in f.metadata:
                kind = type(f.default) if f.default is not None else (int if "int" in str(f.type) else float)
                bad = _violation(f.metadata["range"], kind)
            else:
                continue
            yield pytest.param(base, f"{group}.{f.name}", bad, id=f"{group}.{name or ''}.{f.name}")


CASES = list(_checked_fields())


def test_the_walk_finds_the_fields_it_should():
    keys = {p.values[1] for p in CASES}
    assert {"policy_loss.clip_low", "policy_loss.select_ratio", "policy_loss.dual_clip", "token_selection.threshold",
            "algo.mc_rollouts", "algo.tree_adv", "algo.loss_agg_mode", "train.lr_schedule", "deepspeed.stage",
            "rollout.correction_c", "reward.normalize", "model.dtype"} <= keys
    assert len(CASES) > 60


@pytest.mark.parametrize("base,key,bad", CASES)
def test_every_checked_field_names_its_key(base, key, bad):
    cfg = to_run_config(compose_or_explain(base + [f"{key}={bad}"]))
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(f"{key}="), str(e.value)


def test_the_lists_are_the_implementations_own():
    """One source per list of names: the schema holds the implementing module's tuple itself."""
    meta = lambda cls, name: next(f for f in dataclasses.fields(cls) if f.name == name).metadata["choices"]  # noqa: E731
    from rltrain.config import OPTIONS, RolloutConfig
    assert meta(GRPOConfig, "loss_agg_mode") is core.AGGREGATION_MODES
    assert meta(GRPOConfig, "kl_estimator") is core.KL_KINDS
    assert meta(RolloutConfig, "correction") is correction.CORRECTION_MODES
    assert meta(OPTIONS["token_selection"]["high_entropy"], "normalize") is select.NORMALIZE_MODES
    cfg = to_run_config(compose_or_explain(["algo.loss_agg_mode=token-sum"]))
    with pytest.raises(ConfigError, match="choose one of: " + ", ".join(core.AGGREGATION_MODES)):
        validate(cfg)


def test_each_reward_checks_its_own_normalize():
    # classifier's modes are its own (the combined reward's list used to be applied to it)
    validate(to_run_config(compose_or_explain(["reward=classifier", "reward.model_path=m",
                                               "reward.normalize=running"])))
    with pytest.raises(ConfigError, match=r"reward\.normalize='running'.*none, then_sum"):
        validate(to_run_config(compose_or_explain(["reward=combined", "reward.normalize=running"])))


@pytest.mark.parametrize("over,needle", [
    (["rollout.top_p=0"], "rollout.top_p=0.0"),
    (["rollout.top_k=-1"], "rollout.top_k=-1"),
    (["rollout.temperature=-1"], "rollout.temperature=-1.0"),
    (["rollout.max_new_tokens=0"], "rollout.max_new_tokens=0"),
    (["eval.max_new_tokens=0"], "eval.max_new_tokens=0"),
    (["eval.n=0"], "eval.n=0"),
    (["eval.n=2", "eval.temperature=1", "eval.top_p=1.5"], "eval.top_p=1.5"),
])
def test_sampling_ranges_are_the_sampler_own_with_the_key(over, needle):
    with pytest.raises(ConfigError) as e:
        validate(to_run_config(compose_or_explain(over)))
    assert str(e.value).startswith(needle) and "SamplingParams" in str(e.value), str(e.value)


def test_bounded_grammar():
    assert holds("≥ 0", 0) and not holds("≥ 0", -1e-9)
    assert holds("> 1", 1.5) and not holds("> 1", 1)
    assert holds("in (0, 1]", 1) and not holds("in (0, 1]", 0)
    assert holds("in [0, 0.5)", 0) and not holds("in [0, 0.5)", 0.5)
    with pytest.raises(ValueError):
        bounded(-1, "≥ 0")  # a default outside its own range fails at import
    with pytest.raises(ValueError):
        one_of(("a", "b"), "c")


def test_spo_keeps_one_probability_mask():
    """SPO's mask is algo.prob_mask (before whitening, threshold algo.cut_threshold); the token
    selection of the same name would mask a second time, so it is refused, naming both keys."""
    with pytest.raises(ConfigError) as e:
        validate(to_run_config(compose_or_explain(["algo=spo_tree", "token_selection=prob_mask"])))
    assert "token_selection=prob_mask" in str(e.value) and "algo.prob_mask" in str(e.value)
    for over in (["algo=spo_chain", "algo.prob_mask=false"], ["algo=spo_tree", "token_selection=high_entropy"],
                 ["algo=grpo", "token_selection=prob_mask"]):
        validate(to_run_config(compose_or_explain(over)))


def test_every_spo_option_has_its_step():
    from rltrain.loops.spo import STEPS

    assert set(STEPS) == {s for s in OPTIONS["algo"].values() if issubclass(s, SPOConfig)}
    assert STEPS[SPOChainConfig].__name__ == "chain_step"
