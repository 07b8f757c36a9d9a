"""``rollout.engine=vllm`` in the other sampling loops, through the real command on model=tiny: 2-step runs of
PPO, SPO-chain (its rollouts and Monte-Carlo continuations) and iterative DPO (a round per step) with the
weights pushed after each update. Each is compared with a 1-step run of rltrain's engine from the same seed
and weights: the vLLM run's step-1 rollouts and sampled initial evaluation differ from it (another sampler:
the loop and the evaluation really sample through vLLM), while its sampled-token log-probs equal the
trainer's at both steps (the mismatch metrics, where the loop logs them; step 2 samples with step 1's
pushed update). No process of a run is left afterwards."""
import uuid

import pytest

from tests.cli import metrics, run_ok
from tests.loops.test_samples_e2e import samples
from tests.vllm_engine.test_vllm_grpo import ARGS, marked_processes, run_beside

LOOPS = {"ppo": ["algo=ppo"],
         "spo_chain": ["algo=spo_chain", "algo.mc_rollouts=2", "algo.cut_interval=3"],
         "iterative_dpo": ["algo=dpo", "algo.iterative=true", "algo.rounds=2", "train.micro_batch_size=8"]}
# A sampled initial evaluation (2 answers per question at T = 1), not cached: its answers are written.
EVAL = ["eval.n=2", "eval.temperature=1.0", "eval.k=[2]", "eval.cache_base=false", "log.eval_samples=8",
        "log.samples_per_step=8"]


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_two_steps_with_vllm(loop, tmp_path):
    args = [*ARGS, *LOOPS[loop], *EVAL]
    one_step = ["train.steps=1"] + (["algo.rounds=1"] if loop == "iterative_dpo" else [])  # round 0's first step
    mark = uuid.uuid4().hex
    with run_beside([*args, "rollout.engine=rltrain", *one_step], tmp_path / "own"):
        out = run_ok([*args, "rollout.engine=vllm"], tmp_path / "vllm", RLTRAIN_TEST_MARK=mark)
    rows = metrics(tmp_path / "vllm")
    assert [r["step"] for r in rows] == [1, 2], out[-3000:]
    assert all(r["time/weight_sync"] > 0 for r in rows)  # pushed after each update
    if loop != "iterative_dpo":  # DPO's loss reads no sampler log-probs: no mismatch metrics
        assert all(r["mismatch/abs_dlogp_mean"] < 1e-4 for r in rows), [r["mismatch/abs_dlogp_mean"] for r in rows]
    if loop == "spo_chain":
        assert all(r["spo/cut_states"] > 0 and r["spo/mc_tokens"] > 0 for r in rows)
    assert marked_processes(mark) == []

    def texts(run: str, kind: str, step: int) -> list[str]:
        return [r["completion"] for r in samples(tmp_path / run) if r["kind"] == kind and r["step"] == step]

    assert texts("vllm", "train", 1) and texts("vllm", "train", 1) != texts("own", "train", 1)
    if loop != "iterative_dpo":  # DPO's own evaluation writes no answers to samples.jsonl
        assert texts("vllm", "eval", 0) and texts("vllm", "eval", 0) != texts("own", "eval", 0)
