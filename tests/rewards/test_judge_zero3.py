"""reward=judge under deepspeed=zero3 with 2 ranks: the judge's parameters are sharded (each rank
holds part of them), ranks with different numbers of completions (so different numbers of judge
batches, each a collective forward under ZeRO-3) do not hang, and every score equals the one an
unsharded judge gives in a single process.

The test runs this file as a worker script in 2 processes (one thread each).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
COUNTS = (5, 1)  # completions scored by rank 0 and rank 1; batch_size 2 → 3 batches vs 1


def _samples():
    from rltrain.types import Sample

    return [Sample(id=f"q{i}", question=f"What is {i} + {i}?", answer=str(2 * i)) for i in range(sum(COUNTS))]


def _completions():
    return [f"The answer is {2 * i if i % 2 else i + 1}." for i in range(sum(COUNTS))]


def _config():
    from rltrain.config import OPTIONS, DeepSpeedConfig, GRPOConfig, JudgeRewardConfig, ModelConfig, RunConfig

    return RunConfig(algo=GRPOConfig(), token_selection=OPTIONS["token_selection"]["all"](),
                     policy_loss=OPTIONS["policy_loss"]["clip"](),
                     model=ModelConfig(name="tiny", dtype="fp32"),
                     reward=JudgeRewardConfig(model_path="tiny", batch_size=2),
                     deepspeed=DeepSpeedConfig(name="zero3", stage=3), resume="never")


def worker(out: str, rank: int, world: int, port: int) -> None:
    from rltrain.engine.dist import init_dist
    from rltrain.loops import setup

    torch.set_num_threads(1)
    dist = init_dist(rank, world, master_addr="127.0.0.1", master_port=port, timeout_s=120)
    reward = setup.build_reward_fn(_config(), dist)
    held = sum(getattr(p, "ds_tensor", p).numel() for p in reward._model.parameters())
    total = sum(getattr(p, "ds_numel", p.numel()) for p in reward._model.parameters())
    lo = sum(COUNTS[:rank])
    mine = slice(lo, lo + COUNTS[rank])
    scores = reward(_samples()[mine], _completions()[mine]).scores
    scores_again = reward(_samples()[mine], _completions()[mine]).scores  # a second call also pairs up
    Path(out, f"rank{rank}.json").write_text(json.dumps(
        {"scores": [float(s) for s in scores], "again": [float(s) for s in scores_again],
         "held": held, "total": total}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sharded_judge_matches_the_plain_judge(tmp_path):
    from rltrain.loops import setup

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, __file__, "worker", str(tmp_path), str(r), "2", str(port)],
                              cwd=REPO, env=dict(env, LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, text in zip(procs, logs):
        assert p.returncode == 0, text[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    plain = setup.build_reward_fn(_config())  # no dist: the judge as one process loads it
    want = plain(_samples(), _completions()).scores
    got = ranks[0]["scores"] + ranks[1]["scores"]
    assert len(got) == len(want) == sum(COUNTS)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want, dtype=torch.float32), atol=1e-5, rtol=0)
    assert ranks[0]["again"] == ranks[0]["scores"] and ranks[1]["again"] == ranks[1]["scores"]
    assert len(set(round(s, 4) for s in want)) > 1  # the scores differ, so matching them means something
    for r in ranks:  # each rank holds about half of the judge
        assert r["held"] < 0.6 * r["total"], r


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    _, _, out, rank, world, port = sys.argv
    worker(out, int(rank), int(world), int(port))
