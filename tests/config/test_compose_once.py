"""The ``rltrain`` process composes and validates a config once: ``main`` checks it up front (for the
one-line errors) and the Hydra job of that same config runs on the checked config; a sweep's other
jobs check their own. Counted through the real entry point with the launch itself stubbed out."""
import json
import subprocess
import sys

from tests.cli import REPO

# Runs rltrain.cli.main() with validate, preflight and launch counted (launch does nothing).
COUNTING_MAIN = """
import json, sys
import rltrain.cli as cli
import rltrain.config as config
from rltrain import launch
calls = {"validate": 0, "preflight": 0, "launch": []}
validate, preflight = config.validate, cli.run_preflight
def counted_validate(*a, **k):
    calls["validate"] += 1
    return validate(*a, **k)
def counted_preflight(*a, **k):
    calls["preflight"] += 1
    return preflight(*a, **k)
config.validate, cli.run_preflight = counted_validate, counted_preflight
launch.launch = lambda cfg: calls["launch"].append([cfg.seed, cfg.run_dir is not None]) or {}
sys.argv = ["rltrain"] + sys.argv[1:]
try:
    cli.main()
finally:
    print("CALLS " + json.dumps(calls))
"""

TINY = ["model=tiny", "log.console=false", "launch.threads_per_rank=1"]


def _calls(*args, flags=()) -> dict:
    r = subprocess.run([sys.executable, "-c", COUNTING_MAIN, *flags, *TINY, *args], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    line = [x for x in r.stdout.splitlines() if x.startswith("CALLS ")]
    assert r.returncode == 0 and line, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(line[-1][len("CALLS "):])


def test_a_single_run_is_validated_and_preflighted_once(tmp_path):
    calls = _calls("seed=3", f"hydra.run.dir={tmp_path / 'run'}")
    assert calls == {"validate": 1, "preflight": 1, "launch": [[3, True]]}


def test_a_sweep_checks_each_job_once(tmp_path):
    # job 0 is the config main() checked (no second validate); job 1 validates its own; each job runs
    # its preflight in run_job (main() skips it for sweeps)
    calls = _calls("seed=4,5", f"hydra.sweep.dir={tmp_path / 'sweep'}", flags=["-m"])
    assert calls == {"validate": 2, "preflight": 2, "launch": [[4, True], [5, True]]}


def test_a_bad_value_still_fails_in_main_with_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rltrain.cli", *TINY, "policy_loss=clip_cov",
                        "policy_loss.select_ratio=2", f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("rltrain: config error: policy_loss.select_ratio=2"), lines[0]
    assert not (tmp_path / "run").exists()
