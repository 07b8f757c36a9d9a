"""``rollout.engine=vllm`` through the real command: a 2-step GRPO run on model=tiny with each engine and an
OPD run with vLLM, the weights pushed after each update (step 2 samples with step 1's update: its log-probs
are the trainer's), the greedy held-out evaluation through vLLM answering as rltrain's engine does, no process
of a run left behind after a normal end, a crash or a SIGKILL, and a run resumed after the SIGKILL replays the
uninterrupted one exactly."""
import os
import signal
import time
import uuid
from pathlib import Path

from tests.cli import TINY, metrics, run_ok, start_cli
from tests.loops.test_samples_e2e import samples

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
        out = run_ok([*ARGS, f"rollout.engine={engine}", "eval.cache_base=false", "log.eval_samples=8"],
                     tmp_path / engine, RLTRAIN_TEST_MARK=mark)
        rows = metrics(tmp_path / engine)
        assert [r["step"] for r in rows] == [1, 2], out[-3000:]
        assert all(("time/weight_sync" in r) == (engine == "vllm") for r in rows)
        # The sampler's log-probs against the trainer's: equal up to float rounding with either engine,
        # at step 2 only if the update of step 1 reached vLLM.
        assert all(r["mismatch/abs_dlogp_mean"] < 1e-4 for r in rows), [r["mismatch/abs_dlogp_mean"] for r in rows]
        assert marked_processes(mark) == []
    # The greedy initial evaluation (through vLLM in the vLLM run) answers exactly as rltrain's engine does.
    greedy = {e: [r["completion"] for r in samples(tmp_path / e) if r["kind"] == "eval" and r["step"] == 0]
              for e in ("rltrain", "vllm")}
    assert len(greedy["vllm"]) == 8 and greedy["vllm"] == greedy["rltrain"]
    # On-policy distillation samples through GRPO's collect: the student (model=tiny's initial weights) learns
    # from the checkpoint of the vLLM run above, and its updates reach vLLM too.
    out = run_ok([*ARGS, "algo=opd", f"algo.teacher_path={tmp_path / 'vllm'}", "rollout.engine=vllm"],
                 tmp_path / "opd")
    rows = metrics(tmp_path / "opd")
    assert [r["step"] for r in rows] == [1, 2] and all("time/weight_sync" in r for r in rows), out[-3000:]
    assert all(r["mismatch/abs_dlogp_mean"] < 1e-4 for r in rows), [r["mismatch/abs_dlogp_mean"] for r in rows]


def test_sigkill_leaves_no_process_and_resume_replays_exactly(tmp_path):
    """SIGKILL after the step-2 checkpoint: nothing of the run survives, and the resumed run's steps equal an
    uninterrupted run's (the engine restarts from the checkpoint's weights; the samples are seeded by step)."""
    args = [*ARGS, "rollout.engine=vllm", "train.steps=6", "checkpoint.every=2"]
    run_ok(args, tmp_path / "whole")
    mark = uuid.uuid4().hex
    proc = start_cli(args, tmp_path / "killed", RLTRAIN_TEST_MARK=mark)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "checkpoints" / "step_000002").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    assert proc.pid in marked_processes(mark)  # the check sees a live run
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(1)
    assert marked_processes(mark) == []
    assert len(metrics(tmp_path / "killed")) < 6  # killed before the end
    run_ok(args, tmp_path / "killed")
    whole = {r["step"]: r for r in metrics(tmp_path / "whole")}
    resumed = {r["step"]: r for r in metrics(tmp_path / "killed")}  # a replayed step's later row wins
    assert sorted(resumed) == list(range(1, 7))
    for step in range(3, 7):
        same = {k: v for k, v in whole[step].items() if not k.startswith(("time/", "perf/", "wall"))}
        assert {k: resumed[step][k] for k in same} == same, step


def test_a_crashing_run_exits_and_leaves_no_process(tmp_path):
    """A run that raises with its engine running (a reward that fails on half the completions, beyond
    reward.max_fail_fraction) exits with an error, promptly (the engine does not hold the interpreter open),
    and leaves no process."""
    from tests.cli import run_cli

    mark = uuid.uuid4().hex
    t0 = time.time()
    r = run_cli([*ARGS, "rollout.engine=vllm", "eval.at_start=false", "reward.fn=tests.toy_rewards:explode_on_odd"],
                tmp_path, timeout=300, RLTRAIN_TEST_MARK=mark)
    assert r.returncode != 0 and "failed" in (r.stdout + r.stderr), (r.stdout + r.stderr)[-3000:]
    assert "vLLM engine started" in (tmp_path / "rltrain.log").read_text()  # it crashed with the engine up
    assert time.time() - t0 < 240
    assert marked_processes(mark) == []
