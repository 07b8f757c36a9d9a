"""rltrain/threads.py: the threads a rank computes with, read from a fake affinity, cgroup tree
and load (nothing here depends on timing), and that the wait policy reaches OpenMP before torch
loads."""
import os
import subprocess
import sys

import pytest

from rltrain import threads
from rltrain.launch import warn_if_loaded
from tests.cli import REPO


def cgroup_tree(tmp_path, proc_line: str, files: dict[str, str]):
    (tmp_path / "proc").mkdir(parents=True)
    (tmp_path / "proc" / "cgroup").write_text(proc_line + "\n")
    for rel, text in files.items():
        p = tmp_path / "cg" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return dict(root=tmp_path / "cg", proc_cgroup=tmp_path / "proc" / "cgroup")


def test_cgroup_v2_quota_tightest_ancestor_wins(tmp_path):
    paths = cgroup_tree(tmp_path, "0::/machine.slice/job/step", {
        "cpu.max": "max 100000\n",
        "machine.slice/cpu.max": "150000 100000\n",
        "machine.slice/job/cpu.max": "300000 100000\n",
        "machine.slice/job/step/cpu.max": "max 100000\n"})
    assert threads.cgroup_cpu_quota(**paths) == 1.5


def test_cgroup_v2_without_limit_and_unreadable(tmp_path):
    assert threads.cgroup_cpu_quota(**cgroup_tree(tmp_path, "0::/a", {"a/cpu.max": "max 100000\n"})) is None
    assert threads.cgroup_cpu_quota(root=tmp_path, proc_cgroup=tmp_path / "missing") is None


def test_cgroup_v1_quota(tmp_path):
    paths = cgroup_tree(tmp_path, "4:cpu,cpuacct:/docker/abc", {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"})
    assert threads.cgroup_cpu_quota(**paths) == 0.5
    unlimited = cgroup_tree(tmp_path / "u", "4:cpu,cpuacct:/", {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert threads.cgroup_cpu_quota(**unlimited) is None


@pytest.mark.parametrize("kw, want", [
    (dict(affinity=2, quota=None), 2),
    (dict(affinity=8, quota=None, local_world=2), 4),
    (dict(affinity=8, quota=2.5), 2),           # quota rounds down
    (dict(affinity=8, quota=0.5), 1),           # at least one thread
    (dict(affinity=2, quota=16.0), 2),          # a quota above the affinity does not bind
    (dict(affinity=3, quota=None, local_world=4), 1),
    (dict(affinity=2, quota=None, configured=6), 6),
    (dict(affinity=2, quota=None, slurm_cpus=4), 4),
])
def test_cpu_budget(kw, want):
    assert threads.cpu_budget(**kw).threads == want


def test_cpu_budget_says_why():
    assert threads.cpu_budget(affinity=8, quota=2.5).why == "the cgroup's CPU quota of 2.5 cores"
    assert (threads.cpu_budget(2, affinity=4, quota=None).why
            == "4 cores in this process's CPU affinity, shared by 2 ranks")


def test_load_warning_text():
    assert threads.load_warning(2.0, 1.0, 2) is None
    assert threads.load_warning(0.4, 1.0, 1) is None
    assert threads.load_warning(3.5, 0.2, 2) is None  # a job that has just ended: nothing busy now
    assert threads.load_warning(3.26, 1.04, 2) == (
        "the load average is 3.3 on the 2 cores this run uses and other processes keep 1.0 of them busy: steps "
        "will be slower (rltrain's threads sleep while they wait instead of spinning; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})")
    assert "on the 1 core this run uses" in threads.load_warning(1.5, 1.0, 1)


def test_launch_prints_the_warning_once_when_loaded(monkeypatch, capsys):
    from rltrain.config import RunConfig

    cfg = RunConfig()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: None)
    monkeypatch.setattr(threads, "others_busy_now", lambda: 1.0)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.9, 3.0, 3.0))
    warn_if_loaded(cfg, 1)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0, 3.0, 3.0))
    warn_if_loaded(cfg, 1)
    err = capsys.readouterr().err
    assert err.startswith("rltrain: warning: the load average is 4.0 on the 2 cores") and err.count("\n") == 1
    monkeypatch.setattr(threads, "others_busy_now", lambda: 0.1)
    warn_if_loaded(cfg, 1)
    assert capsys.readouterr().err == ""


def test_busy_seconds_reads_only_the_given_cores(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  900 0 100 5000 0 0 0 0 0 0\n"
                    "cpu0 100 0 0 1000 50 0 0 0 0 0\n"
                    "cpu1 200 10 20 1000 0 0 0 5 0 0\n"
                    "cpu2 600 0 80 3000 0 0 0 0 0 0\n"
                    "intr 12345\n")
    assert threads.busy_seconds({0, 1}, stat) == pytest.approx((100 + 235) / os.sysconf("SC_CLK_TCK"))
    assert threads.busy_seconds({0}, tmp_path / "absent") is None


def test_others_busy_now_sees_a_busy_process():
    """A real competitor pinned to this process's first core: counted as about one busy core (the
    measuring process sleeps meanwhile). Bounds are wide: the machine may be doing other work too."""
    cpu = min(os.sched_getaffinity(0))
    hog = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        import time
        time.sleep(0.5)
        assert 0.6 <= threads.others_busy_now(0.5) <= len(os.sched_getaffinity(0)) + 0.2
    finally:
        hog.kill()
        hog.wait()


def test_set_wait_policy_keeps_the_users():
    env = {}
    assert threads.set_wait_policy(env) == "PASSIVE" and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert threads.set_wait_policy(env) == "ACTIVE"


# What OMP_WAIT_POLICY holds at the moment torch is first imported, the module named in argv imported first.
TORCH_SEES = """
import importlib, os, sys
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "seen" not in globals():
            globals()["seen"] = os.environ.get("OMP_WAIT_POLICY")
        return None
sys.meta_path.insert(0, Spy())
importlib.import_module(sys.argv[1])
import torch  # where the module did not load it, the run does later
print(globals().get("seen"))
"""


@pytest.mark.parametrize("module", ["rltrain.cli", "rltrain.launch"])
def test_wait_policy_is_set_before_torch_loads(module):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", TORCH_SEES, module], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "PASSIVE"

