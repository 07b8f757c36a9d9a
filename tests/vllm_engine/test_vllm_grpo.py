"""``rollout.engine=vllm`` through the real command: GRPO runs on model=tiny with each engine (vLLM's is the
session's shared run, conftest.vllm_run) and an OPD run with vLLM, the weights pushed after each update (a step
samples with the previous step's update: its log-probs are the trainer's), the greedy held-out evaluation
through vLLM answering as rltrain's engine does, no process of a run left behind after a normal end, a crash or
a SIGKILL, and a run resumed after the SIGKILL replays the uninterrupted one exactly."""
import contextlib
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
# The session's shared vLLM run (conftest.vllm_run): GRPO, 6 steps, a checkpoint every 2, the initial
# evaluation not cached and its answers written.
VLLM_RUN = [*ARGS, "rollout.engine=vllm", "train.steps=6", "checkpoint.every=2", "eval.cache_base=false",
            "log.eval_samples=8"]


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


@contextlib.contextmanager
def run_beside(args, run_dir):
    """``rltrain <args>`` in a subprocess while the block runs (the tests' runs take one thread each: on two
    free cores the two overlap); leaving the block waits for it and asserts it succeeded (if the block
    raised, it is killed)."""
    proc = start_cli(args, run_dir)
    try:
        yield proc
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-6000:]


def test_grpo_with_each_engine(vllm_run, tmp_path):
    """A 2-step run with rltrain's engine and the session's 6-step vLLM run (the same arguments but the step count
    and checkpoints), and, beside the first, a 2-step OPD run with vLLM."""
    mark = uuid.uuid4().hex
    # On-policy distillation samples through GRPO's collect: the student (model=tiny's initial weights) learns
    # from the checkpoint of the vLLM run, and its updates reach vLLM too.
    opd = [*ARGS, "algo=opd", f"algo.teacher_path={vllm_run.dir}", "rollout.engine=vllm"]
    with run_beside(opd, tmp_path / "opd"):
        out = run_ok([*ARGS, "rollout.engine=rltrain", "eval.cache_base=false", "log.eval_samples=8"],
                     tmp_path / "rltrain", RLTRAIN_TEST_MARK=mark)
    assert marked_processes(mark) == [] and vllm_run.left == []
    rows = metrics(tmp_path / "opd")
    assert [r["step"] for r in rows] == [1, 2] and all("time/weight_sync" in r for r in rows)
    assert all(r["mismatch/abs_dlogp_mean"] < 1e-4 for r in rows), [r["mismatch/abs_dlogp_mean"] for r in rows]
    runs = {"rltrain": tmp_path / "rltrain", "vllm": vllm_run.dir}
    for engine, steps in (("rltrain", 2), ("vllm", 6)):
        rows = metrics(runs[engine])
        log = out if engine == "rltrain" else vllm_run.out
        assert [r["step"] for r in rows] == list(range(1, steps + 1)), log[-3000:]
        assert all(("time/weight_sync" in r) == (engine == "vllm") for r in rows)
        # The sampler's log-probs against the trainer's: equal up to float rounding with either engine,
        # from step 2 on only if the previous step's update reached vLLM.
        assert all(r["mismatch/abs_dlogp_mean"] < 1e-4 for r in rows), [r["mismatch/abs_dlogp_mean"] for r in rows]
    # The greedy initial evaluation (through vLLM in the vLLM run) answers exactly as rltrain's engine does.
    greedy = {e: [r["completion"] for r in samples(d) if r["kind"] == "eval" and r["step"] == 0]
              for e, d in runs.items()}
    assert len(greedy["vllm"]) == 8 and greedy["vllm"] == greedy["rltrain"]


def test_sigkill_leaves_no_process_and_resume_replays_exactly(vllm_run, tmp_path):
    """SIGKILL after the step-2 checkpoint: nothing of the run survives, and the resumed run's steps equal the
    uninterrupted shared run's (the engine restarts from the checkpoint's weights; the samples are seeded by
    step)."""
    mark = uuid.uuid4().hex
    proc = start_cli(VLLM_RUN, tmp_path / "killed", RLTRAIN_TEST_MARK=mark)
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
    run_ok(VLLM_RUN, tmp_path / "killed")
    whole = {r["step"]: r for r in metrics(vllm_run.dir)}
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
