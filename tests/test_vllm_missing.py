"""``rollout.engine=vllm`` where vLLM is not installed (this suite's .venv: ``make vllm`` puts vLLM in
.venv-vllm, whose tests are tests/vllm_engine): one line naming the install command, before any model
loads; and the config rules of the engine (the loops that cannot sample through it are named)."""
import importlib.util

import pytest

from rltrain.cli import compose_or_explain, to_run_config
from rltrain.config import ConfigError, register_configs, validate
from tests.cli import TINY, run_cli


def test_vllm_engine_without_vllm_is_one_line_before_loading(tmp_path):
    assert importlib.util.find_spec("vllm") is None, "this test runs in .venv, which has no vLLM"
    r = run_cli([*TINY, "rollout.engine=vllm"], tmp_path, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rltrain: launch error: rollout.engine=vllm needs vLLM"), r.stderr
    assert "make vllm" in lines[0] and ".venv-vllm/bin/rltrain" in lines[0]
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing ran


@pytest.mark.parametrize("override, words", [
    (["algo=spo_tree"], "algo=spo_tree samples its trees with rltrain's engine"),
    (["algo=dpo"], "algo=dpo samples nothing without algo.iterative=true"),
    (["algo=sft", "data=arith"], "algo=sft samples nothing"),
    (["env=calculator"], "env=calculator"),
])
def test_vllm_engine_rules_name_the_keys(override, words):
    register_configs()
    cfg = to_run_config(compose_or_explain([*TINY, "rollout.engine=vllm", *override]))
    with pytest.raises(ConfigError, match="rollout.engine=vllm") as err:
        validate(cfg, world_size=1)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override", [["algo=ppo"], ["algo=spo_chain"], ["algo=dpo", "algo.iterative=true"],
                                      ["algo=grpo"], ["algo=opd", "algo.teacher_path=x"], ["deepspeed=zero3"],
                                      ["deepspeed=zero2", "launch.nproc_per_node=2"]])
def test_vllm_engine_is_accepted_by_the_sampling_loops(override):
    register_configs()
    validate(to_run_config(compose_or_explain([*TINY, "rollout.engine=vllm", *override])),
             world_size=2 if "launch.nproc_per_node=2" in override else 1)
