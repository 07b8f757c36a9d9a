"""env=reasoning_gym (rltrain/envs/reasoning_gym.py): a reasoning-gym item's question as the episode, the
task's scorer on the last turn, a retry turn for an answer without <answer> tags; configured like
data=reasoning_gym (the option brings the data, which brings the reward)."""
import pytest
import torch

from rltrain.cli import compose_or_explain, to_run_config
from rltrain.config import ConfigError, register_configs, validate
from rltrain.data.reasoning_gym import reasoning_gym
from rltrain.envs import episode_factory
from rltrain.envs.reasoning_gym import RETRY
from rltrain.loops.env_episodes import play_and_score
from rltrain.rewards.reasoning_gym import ReasoningGymReward
from rltrain.rollout import SamplingParams
from rltrain.types import Sample

register_configs()
STOPS = tuple("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def _cfg(*overrides):
    cfg = to_run_config(compose_or_explain(["model=tiny", "env=reasoning_gym", *overrides]))
    validate(cfg)
    return cfg


def _item():
    return reasoning_gym(tasks=["chain_sum"], size=2, n_test=0, seed=0).train[0]


def test_the_option_brings_the_data_and_its_scorer():
    cfg = _cfg()
    assert (cfg.env.name, cfg.data.name, cfg.reward.name) == ("reasoning_gym", "reasoning_gym", "reasoning_gym")
    assert (cfg.env.retries, cfg.env.max_turns) == (1, 2)
    assert _cfg("data.tasks=[leg_counting]", "reward.binarize=true").reward.binarize is True
    with pytest.raises(ConfigError, match="^env=reasoning_gym plays reasoning-gym tasks: it needs data=reasoning_gym, "
                                          "not data=arith$"):
        _cfg("data=arith")
    with pytest.raises(ConfigError, match=r"^env.retries=2 needs env.max_turns ≥ 3 .* got env.max_turns=2$"):
        _cfg("env.retries=2")
    _cfg("env.retries=0", "env.max_turns=1")


def _env(retries=1):
    return episode_factory("reasoning_gym", tool_timeout_s=1, max_tool_output_chars=1000, max_invalid_tool_calls=2,
                           retries=retries)()


def test_an_unreadable_answer_gets_its_retries_then_the_episode_ends():
    item = _item()
    env = _env(retries=2)
    first = env.reset(item)
    assert first == [{"role": "user", "content": item.question}] and "<answer>" in item.question
    for _ in range(2):
        res = env.step("The answer is 12.")
        assert (res.message, res.done) == ({"role": "user", "content": RETRY}, False)
    assert env.step("Still 12.").done
    env.reset(item)  # a new episode of the same object starts with its retries again
    assert not env.step("12").done


def test_a_tagged_answer_ends_the_episode_right_or_wrong():
    item = _item()
    for answer in (item.answer, "-1"):
        env = _env()
        env.reset(item)
        res = env.step(f"<answer>{answer}</answer>")
        assert res.done and res.message is None
    env = _env(retries=0)
    env.reset(item)
    assert env.step("no tags").done


def test_a_sample_without_a_reasoning_gym_entry_is_refused():
    with pytest.raises(ValueError, match="env=reasoning_gym needs data=reasoning_gym items; sample s"):
        _env().reset(Sample("s", "What is 1 + 1?", "2"))


def test_episodes_with_a_retry_are_scored_by_the_task_on_the_last_turn():
    """The tiny random model never writes <answer> tags: each episode gets its retry turn (the RETRY message
    masked out), and reward=reasoning_gym scores the last turn with the task's scorer."""
    from rltrain.engine.model import load_model

    model, tok = load_model("tiny", None, dtype="fp32", seed=0)
    cfg = _cfg("data.size=4", "data.n_test=0")
    samples = reasoning_gym(tasks=["chain_sum"], size=2, n_test=0, seed=0).train
    params = SamplingParams(max_new_tokens=8, temperature=1.0, n=2, stop_strings=STOPS)
    scored, _ = play_and_score(model, tok, samples, ReasoningGymReward(), cfg, params=params,
                               generator=torch.Generator().manual_seed(0))
    turns = scored.reward.info["env/turns"]
    assert turns == [2.0] * 4, turns
    for i in range(4):
        L = int(scored.lengths[i])
        env_text = tok.decode(scored.response_ids[i, :L][scored.mask[i, :L] == 0])
        assert RETRY in env_text
    assert scored.scores.tolist() == [0.0] * 4 and scored.reward.info["reasoning_gym/raw_score"] == [0.0] * 4
    # With the answer right, the same scorer gives 1 (the reward reads the last turn only).
    assert ReasoningGymReward()([samples[0]], [f"<answer>{samples[0].answer}</answer>"]).scores == [1.0]


def test_grpo_runs_with_env_reasoning_gym(tmp_path):
    """Through the real loop (in-process CLI path): env=reasoning_gym with its data and reward, one step."""
    from tests.cli import metrics, run_inprocess

    run_inprocess(["model=tiny", "env=reasoning_gym", "data.size=16", "data.n_test=4", "eval.size=4",
                   "eval.max_new_tokens=8", "eval.at_start=false", "rollout.max_new_tokens=8",
                   "rollout.stop_strings=[" + ",".join("abcdefghijklmnopqrstuvwxyz0123456789") + "]", "train.steps=1", "train.prompts_per_step=2",
                   "train.samples_per_prompt=4", "train.micro_batch_size=8", "launch.threads_per_rank=1",
                   "log.console=false"], tmp_path / "run")
    (row,) = metrics(tmp_path / "run")
    assert row["env/turns"] > 1.5  # the random model writes no <answer> tags: episodes get their retry
    assert "reasoning_gym/raw_score" in row and row["env/masked_tokens"] > 0
