"""Every shipped config option composes and validates; bad keys, types, options and batch
combinations fail at start with a message naming the key and the valid choices."""
import subprocess
import sys

import pytest

from rltrain.cli import GROUPS, compose_or_explain, group_options, to_run_config
from rltrain.config import ConfigError, register_configs, validate

register_configs()


def _all_options():
    for group in GROUPS:
        for option in group_options(group):
            yield group, option


@pytest.mark.parametrize("group,option", list(_all_options()))
def test_every_option_composes_and_validates(group, option):
    overrides = [f"+experiment={option}"] if group == "experiment" else [f"{group}={option}"]
    if group == "model" and option == "hf":
        overrides.append("model.path=some/model")
    if group == "reward" and option == "python":
        overrides.append("reward.fn=tests.toy_rewards:sevens")
    if group == "env" and option == "python":
        overrides.append("env.cls=tests.envs.toy_envs:Echo")
    if group == "reward" and option == "classifier":
        overrides.append("reward.model_path=some/reward-model")
    if option in ("opd", "menu_opd"):
        overrides.append("algo.teacher_path=some/teacher")
    cfg = to_run_config(compose_or_explain(overrides))
    validate(cfg)
    if group != "experiment":
        assert getattr(cfg, group).name == option


def test_spo_chain_raw_recipe_is_the_e2_cell_it_cites():
    """+experiment=spo_chain_raw is the E2 cell whose numbers its comment and docs/results.md quote:
    SPO-chain, raw MC advantages on every token, β = 0, 8 prompts x 8 samples."""
    cfg = to_run_config(compose_or_explain(["+experiment=spo_chain_raw"]))
    validate(cfg)
    assert cfg.algo.name == "spo_chain"
    assert (cfg.algo.adv_whiten, cfg.algo.prob_mask, cfg.algo.kl_coef) == ("none", False, 0.0)
    assert (cfg.train.prompts_per_step, cfg.train.samples_per_prompt) == (8, 8)
    assert cfg.train.lr_schedule == "constant"  # pinned: its numbers predate the cosine default
    plain = to_run_config(compose_or_explain(["algo=spo_chain"]))
    assert (plain.algo.adv_whiten, plain.algo.prob_mask) == ("batch", True)  # the official recipe stays the default


def test_default_is_grpo_smollm_arith():
    cfg = to_run_config(compose_or_explain([]))
    assert (cfg.algo.name, cfg.model.name, cfg.data.name, cfg.reward.name) == ("grpo", "smollm2_135m", "arith", "math")
    # the recipe of docs/results.md "A recipe for every seed" (seeds 0-7, fp32 and bf16)
    t = cfg.train
    assert (t.steps, t.prompts_per_step, t.samples_per_prompt, t.lr, t.lr_schedule) == (6, 16, 8, 4e-5, "cosine")
    assert (cfg.rollout.temperature, cfg.rollout.max_new_tokens, cfg.model.dtype) == (0.7, 64, "auto")


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        compose_or_explain(["train.stepz=3"])
    msg = str(e.value)
    assert "train.stepz" in msg and "steps" in msg and "prompts_per_step" in msg


def test_key_of_another_algorithm_is_rejected_with_its_valid_keys():
    with pytest.raises(ConfigError) as e:
        compose_or_explain(["algo.gamma=0.9"])  # gamma belongs to ppo, default algo is grpo
    assert "algo.gamma" in str(e.value) and "adv_scale" in str(e.value)
    cfg = to_run_config(compose_or_explain(["algo=ppo", "algo.gamma=0.9"]))
    assert cfg.algo.gamma == 0.9


def test_unknown_option_lists_options():
    with pytest.raises(ConfigError) as e:
        compose_or_explain(["algo=grpoo"])
    msg = str(e.value)
    assert "algo=grpoo" in msg and "spo_tree" in msg and "grpo" in msg and "_schema" not in msg


def test_wrong_type_names_key():
    with pytest.raises(ConfigError) as e:
        compose_or_explain(["train.steps=ten"])
    assert "train.steps=ten" in str(e.value)


def test_batch_sizes_that_do_not_divide_are_named():
    cfg = to_run_config(compose_or_explain(["train.prompts_per_step=3", "train.samples_per_prompt=5",
                                            "train.minibatches_per_step=2"]))
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert "minibatches_per_step=2" in str(e.value) and "15" in str(e.value)
    for algo in ("grpo", "opd"):  # on-policy distillation samples groups like GRPO
        extra = ["algo.teacher_path=teacher"] if algo == "opd" else []
        cfg = to_run_config(compose_or_explain([f"algo={algo}", "train.prompts_per_step=3", *extra]))
        with pytest.raises(ConfigError, match="prompts_per_step=3 must divide evenly over 2 ranks"):
            validate(cfg, world_size=2)
    cfg = to_run_config(compose_or_explain(["train.micro_batch_size=5"]))
    with pytest.raises(ConfigError, match="micro_batch_size=5"):
        validate(cfg)


def test_bad_choice_value_lists_choices():
    cfg = to_run_config(compose_or_explain(["algo.loss_agg_mode=token-sum"]))
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert "token-sum" in str(e.value) and "seq-mean-token-sum-norm" in str(e.value)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "rltrain.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_help_lists_groups():
    r = _cli("--help")
    assert r.returncode == 0
    for g in ("algo", "token_selection", "policy_loss", "reward", "data", "model", "deepspeed"):
        assert g in r.stdout
    assert "spo_tree" in r.stdout and "high_entropy" in r.stdout


def test_cli_cfg_job_prints_resolved_config():
    r = _cli("algo=ppo", "train.steps=3", "--cfg", "job")
    assert r.returncode == 0, r.stderr
    assert "gamma:" in r.stdout and "steps: 3" in r.stdout


def test_cli_bad_key_exits_2_with_message():
    r = _cli("train.lr_foo=1")
    assert r.returncode == 2
    assert "unknown config key 'train.lr_foo'" in r.stderr and "lr" in r.stderr
    assert "Traceback" not in r.stderr


def test_option_schemas_match_builder_signatures():
    """A data/reward option's fields (minus the shared ones) are exactly its builder's kwargs."""
    import inspect

    from rltrain.config import OPTIONS
    from rltrain.data import DATASETS
    from rltrain.config import option_kwargs
    from rltrain.rewards import reward_class

    for name, schema in OPTIONS["data"].items():
        params = set(inspect.signature(DATASETS[name]).parameters)
        assert set(option_kwargs(schema(name=name))) == params, name
    for name, schema in OPTIONS["reward"].items():
        # model/tokenizer are in-memory objects for programmatic use, not config fields
        params = set(inspect.signature(reward_class(name).__init__).parameters) - {"self", "model", "tokenizer"}
        fields = set(option_kwargs(schema(name=name)))
        assert fields == params, name


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match="reward.fn"):
        to_run_config(compose_or_explain(["reward=python"]))


def test_spo_chain_and_tree_have_their_own_schemas():
    with pytest.raises(ConfigError) as e:
        compose_or_explain(["algo=spo_chain", "algo.branching=[2]"])  # a tree key on the chain
    assert "algo.branching" in str(e.value) and "mc_rollouts" in str(e.value)
    with pytest.raises(ConfigError) as e:
        compose_or_explain(["algo=spo_tree", "algo.mc_rollouts=2"])
    assert "algo.mc_rollouts" in str(e.value) and "branching" in str(e.value)
    assert to_run_config(compose_or_explain(["algo=spo_tree", "algo.branching=[2]"])).algo.branching == [2]


@pytest.mark.parametrize("over,key", [
    (["policy_loss=clip", "policy_loss.clip_low=-0.1"], "policy_loss.clip_low"),
    (["policy_loss=clip", "policy_loss.clip_high=-1"], "policy_loss.clip_high"),
    (["policy_loss=clip_cov", "policy_loss.cov_low=-1"], "policy_loss.cov_low"),
    (["policy_loss=clip_cov", "policy_loss.cov_low=6", "policy_loss.cov_high=5"], "policy_loss.cov_low"),
    (["policy_loss=clip_cov", "policy_loss.select_ratio=0"], "policy_loss.select_ratio"),
    (["policy_loss=kl_cov", "policy_loss.select_ratio=1.5"], "policy_loss.select_ratio"),
    (["policy_loss=clip", "policy_loss.dual_clip=0.5"], "policy_loss.dual_clip"),
    (["token_selection=prob_mask", "token_selection.threshold=0"], "token_selection.threshold"),
    (["algo=spo_chain", "algo.mask_denominator=selected"], "algo.mask_denominator"),
    (["algo=grpo", "algo.adv_whiten=per_minibatch"], "algo.adv_whiten"),
])
def test_ratios_and_clips_are_range_checked_with_the_key(over, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(to_run_config(compose_or_explain(over)))


def test_a_registered_policy_loss_brings_its_own_schema():
    """Adding a policy loss is one registered function (and its yaml): the option's schema is its
    keyword options with their defaults, checked as the entry says, naming the key."""
    import dataclasses

    from rltrain.algos.registry import PolicyLoss
    from rltrain.config.algo import PolicyLossConfig, registered_schemas
    from rltrain.config.fields import check_fields

    def toy(logp, old_logp, advantages, mask, *, beta: float = 0.5, mode: str = "a", cap: float | None = None,
            selected=None, generator=None):
        return logp, {}

    entry = PolicyLoss(toy, checks={"beta": "> 0", "mode": ("a", "b")})
    schema = registered_schemas(PolicyLossConfig, {"toy": entry})["toy"]
    assert dataclasses.asdict(schema()) == {"name": "toy", "beta": 0.5, "mode": "a", "cap": None}
    with pytest.raises(ConfigError, match=r"^policy_loss.beta=0.0 must be > 0"):
        check_fields(schema(beta=0.0), "policy_loss")
    with pytest.raises(ConfigError, match=r"^policy_loss.mode='c' is not valid; choose one of: a, b"):
        check_fields(schema(mode="c"), "policy_loss")


def test_one_option_table_feeds_the_store_the_loops_and_the_registries():
    from rltrain.algos import registry
    from rltrain.cli import group_options
    from rltrain.config import LOOPS, OPTIONS

    for group, options in OPTIONS.items():
        assert set(group_options(group)) == set(options), group  # every yaml option has a schema and back
    assert set(LOOPS) == set(OPTIONS["algo"])
    for group in ("token_selection", "policy_loss"):  # the registries are the option table's rows
        assert list(OPTIONS[group]) == list(registry.REGISTRIES[group])


def test_rollout_correction_is_checked_with_the_key():
    for over, key in [(["rollout.correction=is"], "rollout.correction"), (["rollout.correction_c=1"], "rollout.correction_c"),
                      (["rollout.correction_icepop_low=1.2"], "rollout.correction_icepop_low"),
                      (["rollout.correction_icepop_high=0.9"], "rollout.correction_icepop_low/high")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate(to_run_config(compose_or_explain(over)))


@pytest.mark.parametrize("algo", ["grpo", "opd"])
@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"])
def test_advantage_estimators_compose_with_the_grpo_loops(algo, estimator):
    over = [f"algo={algo}", f"algo.adv_estimator={estimator}"] + (["algo.teacher_path=t"] if algo == "opd" else [])
    cfg = to_run_config(compose_or_explain(over))
    validate(cfg)
    assert cfg.algo.adv_estimator == estimator


def test_new_menu_keys_are_checked_with_the_key():
    cases = [
        (["algo.adv_estimator=reinforce"], "algo.adv_estimator"),
        (["algo.adv_estimator=reinforce_pp_baseline", "train.samples_per_prompt=1", "train.prompts_per_step=8"],
         "samples_per_prompt"),
        (["reward=combined", "reward.normalize=sum_then"], "reward.normalize"),
        (["reward=combined", "reward.normalize=then_sum", "algo=spo_chain"], "reward.normalize=then_sum"),
        (["algo=opd", "algo.teacher_path=t", "algo.reward_weight=-1"], "algo.reward_weight"),
        (["algo=opd"], "algo.teacher_path"),
    ]
    for over, key in cases:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate(to_run_config(compose_or_explain(over)))
    # REINFORCE++ whitens over the batch: one response per prompt is allowed
    validate(to_run_config(compose_or_explain(["algo.adv_estimator=reinforce_pp", "train.samples_per_prompt=1",
                                               "train.prompts_per_step=8"])))
    for algo in ("grpo", "ppo"):
        validate(to_run_config(compose_or_explain([f"algo={algo}", "reward=combined", "reward.normalize=then_sum"])))


@pytest.mark.parametrize("algo", ["grpo", "spo_chain", "spo_tree", "ppo"])
@pytest.mark.parametrize("option", ["policy_loss=gspo", "policy_loss=cispo", "policy_loss=sapo", "policy_loss=gmpo",
                                    "rollout.correction=tis", "rollout.correction=icepop",
                                    "rollout.correction=seq_mask"])
def test_policy_losses_and_corrections_compose_with_every_pg_loop(algo, option):
    cfg = to_run_config(compose_or_explain([f"algo={algo}", option]))
    validate(cfg)
    key, value = option.split("=")
    node = cfg.policy_loss.name if key == "policy_loss" else cfg.rollout.correction
    assert (cfg.algo.name, node) == (algo, value)
