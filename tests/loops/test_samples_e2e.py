"""samples.jsonl from the sampling loops on model=tiny: each step's first rollouts with the reward
the reward function gives their completion and (GRPO) the group-normalised advantage computed by
hand from those rewards; the held-out evaluation's answers with their verdicts; and PPO, SPO-chain,
SPO-tree (its leaves), OPD and iterative DPO write theirs too."""
import json
from pathlib import Path

import pytest

from tests.cli import TINY, metrics, run_inprocess
from tests.toy_rewards import contains_seven, sevens


def samples(run_dir) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "samples.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("grpo") / "run"
    run_inprocess(TINY + ["train.steps=3", "eval.every=2", "eval.cache_base=false", "log.samples_per_step=8",
                          "log.eval_samples=5"], run_dir)
    return run_dir


def test_grpo_writes_each_steps_rollouts_with_their_rewards_and_advantages(grpo_run):
    rows = [r for r in samples(grpo_run) if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1] * 8 + [2] * 8 + [3] * 8  # one whole group (samples_per_prompt 8)
    for step in (1, 2, 3):
        group = [r for r in rows if r["step"] == step]
        assert len({r["id"] for r in group}) == 1 and group[0]["prompt"].startswith("What is ")
        rewards = [r["reward"] for r in group]
        assert rewards == pytest.approx(sevens(None, [r["completion"] for r in group]), abs=1e-6)
        # GRPO: (r − mean) / (std (ddof 1) + 1e-6) within the group, on every token of the response
        mean = sum(rewards) / 8
        std = (sum((x - mean) ** 2 for x in rewards) / 7) ** 0.5
        assert [r["advantage"] for r in group] == pytest.approx([(x - mean) / (std + 1e-6) for x in rewards], abs=1e-5)
        assert all(0 < r["length"] <= 8 and (r["finished"] or r["length"] == 8) for r in group)  # cut at the cap
    # the step's reward/mean in metrics.jsonl covers all 32 rollouts; the first group is part of it
    assert all(0 <= r["reward/mean"] <= 1 for r in metrics(grpo_run))


def test_grpo_writes_the_evaluations_answers_with_their_verdicts(grpo_run):
    rows = [r for r in samples(grpo_run) if r["kind"] == "eval"]
    assert [r["step"] for r in rows] == [0] * 5 + [2] * 5 + [3] * 5  # before, every 2 steps, after
    assert [r["id"] for r in rows[:5]] == [f"test-{i}" for i in range(5)]
    for r in rows:
        assert r["reward"] == pytest.approx(sevens(None, [r["completion"]])[0], abs=1e-6)
        assert r["correct"] == (r["reward"] > 0)  # no info["correct"] from this reward: score > 0
        assert r["answer"] and r["sample"] == 0


@pytest.mark.parametrize("loop", ["ppo", "spo_chain", "spo_tree", "opd", "iterative_dpo"])
def test_the_other_sampling_loops_write_samples(loop, grpo_run, tmp_path):
    base = TINY + ["train.steps=2", "eval.at_start=false", "log.samples_per_step=8", "log.eval_samples=0",
                   "reward.fn=tests.toy_rewards:contains_seven"]
    extra = {"ppo": ["algo=ppo"],
             "spo_chain": ["algo=spo_chain", "algo.mc_rollouts=2", "algo.cut_interval=3"],
             "spo_tree": ["algo=spo_tree", "algo.branching=[4,2]", "algo.segment_len=4"],  # 8 leaves per prompt
             "opd": ["algo=opd", f"algo.teacher_path={grpo_run}"],
             "iterative_dpo": ["algo=dpo", "algo.iterative=true", "algo.rounds=1", "train.micro_batch_size=8"]}[loop]
    run_inprocess(base + extra, tmp_path)
    rows = samples(tmp_path)
    assert [r["step"] for r in rows] == [1] * 8 + [2] * 8 and {r["kind"] for r in rows} == {"train"}
    for r in rows:
        assert r["reward"] == contains_seven(None, [r["completion"]])[0]
        assert ("advantage" in r) == (loop not in ("iterative_dpo", "spo_tree"))  # tree: edges hold advantages
        assert 0 < r["length"] <= 8
    for step in (1, 2):
        group = [r for r in rows if r["step"] == step]  # one prompt's 8 responses
        assert len({r["id"] for r in group}) == 1
        if loop == "iterative_dpo":  # the pair trained on, where the group's rewards differ: best vs worst
            roles = {r.get("pair"): r["reward"] for r in group if r.get("pair")}
            assert roles == ({"chosen": 1.0, "rejected": 0.0} if len({r["reward"] for r in group}) > 1 else {})


def test_a_resumed_run_writes_the_same_samples_as_an_uninterrupted_one(tmp_path):
    """Killed after step 3 (its last checkpoint: step 2) and resumed: samples.jsonl is cut back to step 2
    and the replayed steps write exactly what the uninterrupted run wrote, once."""
    import shutil

    args = TINY + ["train.steps=4", "checkpoint.every=2", "eval.every=2", "eval.cache_base=false",
                   "log.samples_per_step=4", "log.eval_samples=3"]
    run_inprocess(args, tmp_path / "whole")
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_000004")
    with open(tmp_path / "cut" / "samples.jsonl") as f:  # as written when the kill came after step 3
        kept = [line for line in f if json.loads(line)["step"] <= 3]
    (tmp_path / "cut" / "samples.jsonl").write_text("".join(kept))
    run_inprocess(args, tmp_path / "cut")  # resume=auto: from step 2
    whole, cut = samples(tmp_path / "whole"), samples(tmp_path / "cut")
    assert [(r["step"], r["kind"]) for r in whole] == (
        [(0, "eval")] * 3 + [(1, "train")] * 4 + [(2, "train")] * 4 + [(2, "eval")] * 3 + [(3, "train")] * 4
        + [(4, "train")] * 4 + [(4, "eval")] * 3)
    assert cut == whole
