"""The weight push from a 2-rank ZeRO-3 policy (real DeepSpeed, 2 processes on the CPU, gloo): each rank
runs its own vLLM engine (external_launcher mode on the trainer's process group); after a real optimizer
step the engines are stale (log-probs off by > 1e-2), and after a push, which gathers one parameter at a
time, each rank's vLLM log-probs of the same fixed-seed samples equal the trainer's training forward within
1e-4 (fp32). model=tiny with its tied head (the case a push of the embedding alone gets wrong).

Runs this file as a worker script (``python test_vllm_zero3.py worker OUT RANK WORLD PORT``), one thread
per process. Then the same through the command: a 2-step GRPO run on 2 ranks under ZeRO-3 with an engine per
rank."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TEMPERATURE = 0.7


def worker(out: str, rank: int, world: int, port: int) -> None:
    from rltrain.config import OPTIONS, DeepSpeedConfig, GRPOConfig, ModelConfig, RunConfig, TrainConfig
    from rltrain.engine.dist import init_dist
    from rltrain.engine.model import eos_token_ids
    from rltrain.loops import setup
    from rltrain.loops.pg import PGBatch, PolicyUpdate
    from rltrain.rollout import SamplingParams, response_logprobs
    from rltrain.rollout.vllm_engine import VLLMEngine, is_partitioned

    torch.set_num_threads(1)
    cfg = RunConfig(algo=GRPOConfig(), token_selection=OPTIONS["token_selection"]["all"](),
                    policy_loss=OPTIONS["policy_loss"]["clip"](),
                    model=ModelConfig(name="tiny", dtype="fp32", tiny_hidden_size=128),
                    deepspeed=DeepSpeedConfig(name="zero3", stage=3),
                    train=TrainConfig(steps=1, prompts_per_step=4, samples_per_prompt=2, minibatches_per_step=1,
                                      micro_batch_size=2, lr=1e-2), run_dir=f"{out}/run", resume="never")
    dist = init_dist(rank, world, master_addr="127.0.0.1", master_port=port, timeout_s=300)
    actor, tok = setup.build_actor(cfg, dist, total_optimizer_steps=1)
    assert is_partitioned(actor.module)
    engine = VLLMEngine(actor.module, tok, dtype="fp32", max_model_len=128, kv_cache_gb=0.1, threads=1)
    eos = eos_token_ids(actor.module, tok)
    prompts = [tok(f"rank {rank}: what is 12 + 30?", add_special_tokens=False).input_ids,
               tok("Count to seven:", add_special_tokens=False).input_ids]
    params = SamplingParams(max_new_tokens=12, temperature=TEMPERATURE, n=2)

    def gap() -> float:
        """Largest |vLLM log-prob − training forward log-prob| over this rank's fixed-seed samples."""
        ro = engine.generate(prompts, params, eos_token_ids=eos, pad_token_id=tok.pad_token_id,
                             generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), actor.gathered():  # the forward is local while gathered (every rank enters)
            lp, _ = response_logprobs(actor.module, ro.prompt_ids, ro.response_ids, pad_id=tok.pad_token_id,
                                      temperature=TEMPERATURE)
        return float(((lp - ro.logprobs).abs() * ro.response_mask).max())

    record = {"start": gap()}
    # One real optimizer step on this rank's sampled rows (the gradients are reduced over both ranks).
    ro = engine.generate(prompts, params, eos_token_ids=eos, pad_token_id=tok.pad_token_id,
                         generator=torch.Generator().manual_seed(1))
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None].expand_as(ro.response_mask).contiguous()
    PolicyUpdate(cfg).run(actor, PGBatch(ro.prompt_ids, ro.response_ids, ro.response_mask, adv), dist,
                          pad_id=tok.pad_token_id, step=0, generator=torch.Generator().manual_seed(0))
    record["stale"] = gap()
    record["push_s"] = engine.push(actor.module)
    record["pushed"] = gap()
    engine.close()
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zero3_two_ranks_push_matches_the_trainer(tmp_path):
    port, world = _free_port(), 2
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, __file__, "worker", str(tmp_path), str(r), str(world), str(port)],
                              cwd=REPO, env=dict(env, LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(world)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, text in zip(procs, logs):
        assert p.returncode == 0, text[-6000:]
    for r in range(world):
        rec = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert rec["start"] < 1e-4, (r, rec)  # the first push, at start: the gathered initial weights
        assert rec["stale"] > 1e-2, (r, rec)  # the optimizer step moved the weights: the check sees a stale engine
        assert rec["pushed"] < 1e-4, (r, rec)


def test_grpo_two_ranks_zero3_with_vllm(vllm_run, tmp_path):
    """The command with 2 ranks under ZeRO-3 and an engine per rank: step 1 samples what the session's 1-rank
    vLLM run samples (the seeds follow global prompt positions and the step, not the evaluation before it or the
    run's length; same rollout metrics), step 2 samples with step 1's pushed update (log-probs the trainer's),
    and no process of the run is left."""
    import uuid

    from tests.cli import metrics, run_ok
    from tests.vllm_engine.test_vllm_grpo import ARGS, marked_processes

    mark = uuid.uuid4().hex
    out = run_ok([*ARGS, "rollout.engine=vllm", "eval.at_start=false", "launch.nproc_per_node=2", "deepspeed=zero3"],
                 tmp_path / "two", RLTRAIN_TEST_MARK=mark)
    one, two = metrics(vllm_run.dir), metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2] and all("time/weight_sync" in r for r in two), out[-3000:]
    assert all(r["mismatch/abs_dlogp_mean"] < 1e-4 for r in two), [r["mismatch/abs_dlogp_mean"] for r in two]
    for k in ("reward/mean", "response/length_mean", "response/length_max"):
        assert two[0][k] == one[0][k], k
    assert marked_processes(mark) == []


def test_sigkill_of_a_two_rank_vllm_run_leaves_no_process(tmp_path):
    """SIGKILL of the command (the launcher) after step 1 of a 2-rank ZeRO-3 run, each rank holding its vLLM
    engine: the ranks and anything of their engines are gone within seconds (the workers die with their parent;
    the engines live in the workers' processes)."""
    import signal
    import time
    import uuid

    from tests.cli import start_cli
    from tests.vllm_engine.test_vllm_grpo import ARGS, marked_processes

    mark = uuid.uuid4().hex
    proc = start_cli([*ARGS, "rollout.engine=vllm", "eval.at_start=false", "train.steps=50",
                      "launch.nproc_per_node=2", "deepspeed=zero3"], tmp_path, RLTRAIN_TEST_MARK=mark)
    deadline = time.time() + 300
    while not ((tmp_path / "metrics.jsonl").exists() and (tmp_path / "metrics.jsonl").read_text().strip()):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.1)
    assert len(marked_processes(mark)) >= 3  # the launcher and its two ranks, alive, engines running
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.time() + 30
    while marked_processes(mark) and time.time() < deadline:
        time.sleep(0.2)
    assert marked_processes(mark) == []


if __name__ == "__main__" and sys.argv[1] == "worker":
    worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
