"""Every training loop under ``deepspeed=zero3`` (one rank, model=tiny): the reference is the
sharded inference engine, every generation (rollouts, SPO's MC continuations and trees, mid-run
and final evaluations) runs inside the actor's ``gathered()`` block, which ZeRO-3 needs both for
speed (one gather per phase, not per token) and for correctness with several ranks (ranks whose
responses end at different lengths run different numbers of forwards, so per-layer gathers would
not pair up), and no backward runs inside one.

The loops run in a worker process (``python test_zero3_wiring.py worker OUT``): DeepSpeed leaves a
process group and global state behind that other in-process tests should not inherit. The worker
wraps ``DeepSpeedActor.gathered`` / ``backward``, the decoding loop that ``generate`` and
``sample_tree`` share, and ``build_reference``, and writes what it saw per loop as JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

BASE = ["model=tiny", "model.dtype=fp32", "deepspeed=zero3", "data.n_train=16", "data.n_test=2", "eval.size=2",
        "eval.max_new_tokens=2", "eval.every=1", "reward=python", "reward.fn=tests.toy_rewards:contains_seven",
        "rollout.max_new_tokens=4", "train.steps=2", "train.prompts_per_step=2", "train.samples_per_prompt=2",
        "train.micro_batch_size=4", "checkpoint.every=0", "checkpoint.save_final=false",
        "launch.threads_per_rank=1", "log.console=false"]
LOOPS = {
    "grpo": ["algo=grpo", "algo.kl_coef=0.1"],
    "ppo": ["algo=ppo", "algo.ref_ema=0.5"],
    "spo_chain": ["algo=spo_chain", "algo.mc_rollouts=2", "algo.cut_interval=2"],
    "spo_tree": ["algo=spo_tree", "algo.branching=[2,2]", "algo.segment_len=2"],
    "sft": ["algo=sft", "data=arith"],
    "dpo": ["algo=dpo", "algo.iterative=true", "algo.rounds=1", "reward.fn=tests.toy_rewards:mean_char_code"],
}


# --------------------------------------------------------------------------- worker side


def worker(out: str) -> None:
    from rltrain import launch
    from rltrain.cli import compose_or_explain, to_run_config
    from rltrain.config import register_configs
    from rltrain.engine.deepspeed import DeepSpeedActor
    from rltrain.loops import setup
    from rltrain.rollout import engine, tree

    register_configs()
    state = {"depth": 0}
    seen: dict = {}

    def gathered(self):
        inner = real_gathered(self)

        class Block:
            def __enter__(self_):
                inner.__enter__()
                state["depth"] += 1
                seen["gathers"] += 1

            def __exit__(self_, *exc):
                state["depth"] -= 1
                return inner.__exit__(*exc)

        return Block()

    def backward(self, loss):
        seen["backward_inside"] += state["depth"] > 0
        seen["backward"] += 1
        return real_backward(self, loss)

    def decode(model, *args, **kwargs):
        seen["decode_outside" if state["depth"] == 0 else "decode_inside"] += 1
        return real_decode(model, *args, **kwargs)

    def build_reference(cfg, dist):
        ref = real_reference(cfg, dist)
        seen["reference"] = type(ref).__name__
        return ref

    real_gathered, real_backward = DeepSpeedActor.gathered, DeepSpeedActor.backward
    real_decode, real_reference = engine.decode_tree, setup.build_reference
    DeepSpeedActor.gathered, DeepSpeedActor.backward = gathered, backward
    engine.decode_tree = tree.decode_tree = decode
    setup.build_reference = build_reference
    report = {}
    for name, extra in LOOPS.items():
        seen = {"gathers": 0, "backward": 0, "backward_inside": 0, "decode_inside": 0, "decode_outside": 0,
                "reference": None}
        cfg = to_run_config(compose_or_explain(BASE + extra))
        cfg.run_dir = str(Path(out) / name)
        launch.launch(cfg)
        report[name] = seen
    (Path(out) / "report.json").write_text(json.dumps(report))


# --------------------------------------------------------------------------- test side


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero3_wiring")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, __file__, "worker", str(out)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-6000:]
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("name", list(LOOPS))
def test_generation_only_inside_gathered_and_backward_only_outside(report, name):
    seen = report[name]
    assert seen["decode_inside"] > 0 and seen["backward"] > 0, seen  # the loop generated and trained
    assert seen["decode_outside"] == 0, seen
    assert seen["backward_inside"] == 0, seen


# 2 steps: initial eval, a rollout phase per step, the mid-run eval after step 1, the final eval.
# SFT has no rollout; iterative DPO samples its one round (both steps' prompts) before step 1.
GATHERS = {"grpo": 5, "ppo": 5, "spo_chain": 5, "spo_tree": 5, "sft": 3, "dpo": 5}


@pytest.mark.parametrize("name", list(LOOPS))
def test_one_gather_per_generation_phase(report, name):
    assert report[name]["gathers"] == GATHERS[name], report[name]


@pytest.mark.parametrize("name", ["grpo", "ppo", "spo_chain", "spo_tree", "dpo"])
def test_reference_is_the_sharded_engine(report, name):
    assert report[name]["reference"] == "EngineModule"


if __name__ == "__main__" and sys.argv[1] == "worker":
    worker(sys.argv[2])
