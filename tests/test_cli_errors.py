"""Bad input stops a run with a message that names the problem, and a crashing reward is counted
or stops the run, through the real CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "eval.size=4", "eval.max_new_tokens=4", "rollout.max_new_tokens=6",
        "train.prompts_per_step=2", "train.samples_per_prompt=4", "launch.threads_per_rank=1", "log.console=false"]


def cli(args, run_dir):
    return subprocess.run([sys.executable, "-m", "rltrain.cli", *args, f"hydra.run.dir={run_dir}"], cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)


def test_malformed_data_row_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?", "answer": "#### 4"}\nnot json\n')
    r = cli(TINY + ["data=gsm8k", f"data.path={bad}", "train.steps=1"], tmp_path / "run")
    assert r.returncode != 0
    assert "bad.jsonl" in r.stderr + r.stdout and "line 3" in r.stderr + r.stdout


def test_offline_dataset_without_path_says_which_key_to_set(tmp_path):
    r = cli(TINY + ["data=gsm8k", "train.steps=1"], tmp_path / "run")
    assert r.returncode != 0
    assert "data.path" in r.stderr + r.stdout


def test_crashing_reward_is_counted_then_stops_the_run(tmp_path):
    ok = cli(TINY + ["reward=python", "reward.fn=tests.toy_rewards:explode_on_odd", "reward.max_fail_fraction=1.0",
                     "train.steps=2", "eval.at_start=false"], tmp_path / "tolerant")
    assert ok.returncode == 0, ok.stderr[-3000:]
    rows = [json.loads(l) for l in (tmp_path / "tolerant" / "metrics.jsonl").read_text().splitlines()]
    failed = [r["reward/failed"] for r in rows if "event" not in r]
    assert sum(failed) > 0 and all(f <= 8 for f in failed)
    # failed completions score 0, the rest 1: the mean reward is exactly the surviving fraction
    for r in (r for r in rows if "event" not in r):
        assert abs(r["reward/mean"] - (1 - r["reward/failed"] / 8)) < 1e-9
    strict = cli(TINY + ["reward=python", "reward.fn=tests.toy_rewards:explode_on_odd", "reward.max_fail_fraction=0.0",
                         "train.steps=2", "eval.at_start=false"], tmp_path / "strict")
    assert strict.returncode != 0
    out = strict.stderr + strict.stdout
    assert "reward.max_fail_fraction" in out and "toy reward failed on purpose" in out
