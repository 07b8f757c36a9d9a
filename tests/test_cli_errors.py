"""Bad input stops a run with a message that names the problem, and a crashing reward is counted
or stops the run, through the real CLI.

Every user error is one line ``rltrain: <kind> error: ...`` on stderr naming the key, exit code 2,
before any model is loaded. "Not loaded" is checked through the run directory: Hydra's app creates
it before ``run_job`` starts, and models load only inside ``run_job``; a run directory that was
never created means no model was loaded (and no worker started)."""
import json
from pathlib import Path

from tests.cli import run_cli

TINY = ["model=tiny", "eval.size=4", "eval.max_new_tokens=4", "rollout.max_new_tokens=6",
        "train.prompts_per_step=2", "train.samples_per_prompt=4", "launch.threads_per_rank=1", "log.console=false"]


cli = run_cli  # the real command: these tests are about its exit code and stderr


def assert_user_error(r, run_dir, kind: str, *needles: str) -> str:
    """One stderr line ``rltrain: <kind> error: ...`` holding every needle, exit 2, nothing loaded."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(f"rltrain: {kind} error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not Path(run_dir).exists(), "the run started (Hydra created its directory) before the error"
    return lines[0]


def test_malformed_data_row_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?", "answer": "#### 4"}\nnot json\n')
    r = cli(TINY + ["data=gsm8k", f"data.path={bad}", "train.steps=1"], tmp_path / "run")
    assert_user_error(r, tmp_path / "run", "data", f"{bad}, line 3", "not valid JSON")


def test_offline_dataset_without_path_says_which_key_to_set(tmp_path):
    # HF_HUB_OFFLINE and an empty cache: the same on a machine with or without a network
    r = cli(TINY + ["data=gsm8k", "train.steps=1"], tmp_path / "run", HF_HUB_OFFLINE="1",
            HF_HOME=str(tmp_path / "hf"))
    assert_user_error(r, tmp_path / "run", "data", "data.hub_id='openai/gsm8k'", "data.path=")


def test_spo_tree_on_math_offline_fails_before_loading_the_policy(tmp_path):
    """The issue's case: it used to load the policy and the reference model first."""
    r = cli(["algo=spo_tree", "data=math"], tmp_path / "run", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    assert_user_error(r, tmp_path / "run", "data", "data.path=")


def test_missing_data_file_is_named(tmp_path):
    r = cli(TINY + ["data=math", f"data.path={tmp_path / 'nope.jsonl'}"], tmp_path / "run")
    assert_user_error(r, tmp_path / "run", "data", "nope.jsonl", "does not exist")


def test_model_directory_without_config_json(tmp_path):
    (tmp_path / "weights").mkdir()
    r = cli(TINY + ["model=hf", f"model.path={tmp_path / 'weights'}"], tmp_path / "run")
    assert_user_error(r, tmp_path / "run", "model", "model.path=", "config.json")


def test_model_hub_id_while_offline_and_not_cached(tmp_path):
    r = cli(TINY + ["model=hf", "model.path=some-org/some-model"], tmp_path / "run", HF_HUB_OFFLINE="1",
            HF_HOME=str(tmp_path / "hf"))
    assert_user_error(r, tmp_path / "run", "model", "model.path='some-org/some-model'", "HF_HUB_OFFLINE=1")


def test_missing_judge_and_classifier_models(tmp_path):
    r = cli(TINY + ["reward=judge", f"reward.model_path={tmp_path / 'judge'}"], tmp_path / "run")
    assert_user_error(r, tmp_path / "run", "reward", "reward.model_path=", "does not exist")
    r = cli(TINY + ["reward=classifier", f"reward.model_path={tmp_path / 'rm'}"], tmp_path / "run")
    assert_user_error(r, tmp_path / "run", "reward", "reward.model_path=", "does not exist")


def test_combined_reward_component_is_checked_like_a_reward(tmp_path):
    comp = f"reward.components=[{{name: math}}, {{name: judge, kwargs: {{model_path: {tmp_path / 'j'}}}}}]"
    r = cli(TINY + ["reward=combined", comp], tmp_path / "run")
    assert_user_error(r, tmp_path / "run", "reward", "reward.components[1].kwargs.model_path=")
    r = cli(TINY + ["reward=combined", "reward.components=[{name: maths}]"], tmp_path / "run")
    assert_user_error(r, tmp_path / "run", "reward", "reward.components[0].name='maths'", "math")


def test_python_reward_that_does_not_import(tmp_path):
    r = cli(TINY + ["reward=python", "reward.fn=tests.toy_rewards:no_such_function"], tmp_path / "run")
    assert_user_error(r, tmp_path / "run", "reward", "reward.fn=", "no_such_function")


def test_code_sandbox_that_cannot_run(tmp_path):
    r = cli(TINY + ["reward=code", "reward.isolation=no_such_mode"], tmp_path / "run")
    assert_user_error(r, tmp_path / "run", "config", "reward.isolation", "auto, namespace, process")
    comp = "reward.components=[{name: code, kwargs: {isolation: no_such_mode}}]"
    r = cli(TINY + ["reward=combined", comp], tmp_path / "run")
    assert_user_error(r, tmp_path / "run", "reward", "reward.components[0].kwargs.isolation")


def test_deepspeed_and_launch_settings(tmp_path):
    r = cli(TINY + ["deepspeed.offload_optimizer=true"], tmp_path / "run")
    assert_user_error(r, tmp_path / "run", "launch", "deepspeed.offload_optimizer=true", "deepspeed.stage=0")
    r = cli(TINY + ["deepspeed=zero2", "deepspeed.offload_params=true"], tmp_path / "run")
    assert_user_error(r, tmp_path / "run", "launch", "deepspeed.offload_params=true", "zero3_offload")
    r = cli(TINY + ["launch.timeout_s=0"], tmp_path / "run")
    assert_user_error(r, tmp_path / "run", "launch", "launch.timeout_s=0")


def test_config_errors_stay_one_line_and_full_error_shows_the_traceback(tmp_path):
    r = cli(TINY + ["train.stepz=1"], tmp_path / "run")
    assert_user_error(r, tmp_path / "run", "config", "train.stepz")
    r = cli(TINY + ["data=math", f"data.path={tmp_path / 'nope.jsonl'}"], tmp_path / "run", HYDRA_FULL_ERROR="1")
    assert r.returncode != 0 and "Traceback" in r.stderr and "nope.jsonl" in r.stderr


def test_crashing_reward_is_counted_then_stops_the_run(tmp_path):
    ok = cli(TINY + ["reward=python", "reward.fn=tests.toy_rewards:explode_on_odd", "reward.max_fail_fraction=1.0",
                     "train.steps=2", "eval.at_start=false"], tmp_path / "tolerant")
    assert ok.returncode == 0, ok.stderr[-3000:]
    rows = [json.loads(l) for l in (tmp_path / "tolerant" / "metrics.jsonl").read_text().splitlines()]
    failed = [r["reward/failed"] for r in rows if "event" not in r]
    assert sum(failed) > 0 and all(f <= 8 for f in failed)
    # failed completions score 0, the rest 1: the mean reward is exactly the surviving fraction
    for r in (r for r in rows if "event" not in r):
        assert abs(r["reward/mean"] - (1 - r["reward/failed"] / 8)) < 1e-9
    strict = cli(TINY + ["reward=python", "reward.fn=tests.toy_rewards:explode_on_odd", "reward.max_fail_fraction=0.0",
                         "train.steps=2", "eval.at_start=false"], tmp_path / "strict")
    assert strict.returncode != 0
    out = strict.stderr + strict.stdout
    assert "reward.max_fail_fraction" in out and "toy reward failed on purpose" in out
