"""``rollout.engine=vllm`` through the real command: a 2-step GRPO run on model=tiny with each engine and an
OPD run with vLLM, the weights pushed after each update (step 2 samples with step 1's update: its log-probs
are the trainer's), and no process of a run left behind, after a normal end or a SIGKILL."""
import os
import signal
import time
import uuid
from pathlib import Path

from tests.cli import TINY, metrics, run_ok, start_cli

# Head size 32 (vLLM's CPU attention has no kernel for tiny's default 16); lr large enough that a
# missed push shows in the log-probs of step 2.
ARGS = [*TINY, "model.tiny_hidden_size=128", "train.steps=2", "train.lr=1e-2", "rollout.vllm_kv_cache_gb=0.25"]


def marked_processes(mark: str) -> list[int]:
    """Pids of live processes whose environment holds ``RLTRAIN_TEST_MARK=<mark>`` (a run's and its children's)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and f"RLTRAIN_TEST_MARK={mark}".encode() in (d / "environ").read_bytes().split(b"\0"):
                if (d / "stat").read_text().split(") ")[1][0] != "Z":
                    pids.append(int(d.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def test_grpo_two_steps_with_each_engine(tmp_path):
    for engine in ("rltrain", "vllm"):
        mark = uuid.uuid4().hex
        out = run_ok([*ARGS, f"rollout.engine={engine}"], tmp_path / engine, RLTRAIN_TEST_MARK=mark)
        rows = metrics(tmp_path / engine)
        assert [r["step"] for r in rows] == [1, 2], out[-3000:]
        assert all(("time/weight_sync" in r) == (engine == "vllm") for r in rows)
        # The sampler's log-probs against the trainer's: equal up to float rounding with either engine,
        # at step 2 only if the update of step 1 reached vLLM.
        assert all(r["mismatch/abs_dlogp_mean"] < 1e-4 for r in rows), [r["mismatch/abs_dlogp_mean"] for r in rows]
        assert marked_processes(mark) == []
    # On-policy distillation samples through GRPO's collect: the student (model=tiny's initial weights) learns
    # from the checkpoint of the vLLM run above, and its updates reach vLLM too.
    out = run_ok([*ARGS, "algo=opd", f"algo.teacher_path={tmp_path / 'vllm'}", "rollout.engine=vllm"],
                 tmp_path / "opd")
    rows = metrics(tmp_path / "opd")
    assert [r["step"] for r in rows] == [1, 2] and all("time/weight_sync" in r for r in rows), out[-3000:]
    assert all(r["mismatch/abs_dlogp_mean"] < 1e-4 for r in rows), [r["mismatch/abs_dlogp_mean"] for r in rows]


def test_sigkill_leaves_no_vllm_process(tmp_path):
    mark = uuid.uuid4().hex
    proc = start_cli([*ARGS, "rollout.engine=vllm", "train.steps=200"], tmp_path, RLTRAIN_TEST_MARK=mark)
    deadline = time.time() + 300
    while not (tmp_path / "metrics.jsonl").exists() or not metrics(tmp_path):  # the engine is up and sampling
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.5)
    assert proc.pid in marked_processes(mark)  # the check sees a live run
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(1)
    assert marked_processes(mark) == []
