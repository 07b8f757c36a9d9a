"""The code sandbox against hostile programs: each is contained, scored as a failure with the
right status, and the test process (standing in for the trainer) carries on.

Namespace isolation needs root; ``sandbox_support`` decides once whether this machine can run
it. Where it can, a jail that fails to build fails these tests; where it cannot, they skip
saying why, and the process-isolation tests still run.
"""
import os
import socket
import time

import pytest

from rltrain.rewards.sandbox import Job, Limits, NamespaceUnavailable, Sandbox, SandboxError, mount_plan
from sandbox_support import namespace_sandbox
from sandbox_support import uid_processes as _uid_processes

SECRET = "rltrain-test-secret-7f3a91"


@pytest.fixture(scope="module")
def jail():
    """Generous limits for programs that should run normally."""
    sandbox = namespace_sandbox(Limits(timeout=10.0, program_timeout=30.0), num_workers=2)
    assert sandbox.isolation == "namespace"
    yield sandbox
    sandbox.close()


@pytest.fixture(scope="module")
def tight():
    """Tight limits for programs that must be stopped: 0.5 s per test, 256 MiB, 1 MiB files."""
    sandbox = namespace_sandbox(
        Limits(timeout=0.5, program_timeout=5.0, memory_mb=256, file_mb=1, max_processes=8), num_workers=2,
    )
    yield sandbox
    sandbox.close()


def test_runs_stdin_stdout_and_call_based_programs(jail):
    run = jail.run("a, b = map(int, input().split())\nprint(a + b)", ["1 2\n", "40 2\n"])
    assert run.compile_error is None
    assert [t.status for t in run.tests] == ["ok", "ok"]
    assert [t.output for t in run.tests] == ["3\n", "42\n"]

    run = jail.run("class Solution:\n    def f(self, a, b):\n        return (a, [b])", [[1, 2]], fn_name="f")
    assert run.tests[0].output == "[1, [2]]"  # tuples come back as JSON lists

    run = jail.run("def f(:\n", [""])
    assert run.compile_error is not None and run.compile_error.startswith("SyntaxError")


def test_runs_as_unprivileged_uid_in_its_own_namespaces(jail, repo_root):
    hidden = [os.path.join(repo_root, "pyproject.toml"), os.path.abspath(__file__), "/etc/passwd", "/proc/self/status"]
    assert all(os.path.exists(p) for p in hidden)  # they exist on the host...
    code = f"import os\nprint(os.getuid(), os.getpid(), os.getcwd(), [os.path.exists(p) for p in {hidden!r}])"
    out = jail.run(code, [""]).tests[0].output.split(maxsplit=3)
    assert int(out[0]) >= jail.uid_base  # not root
    assert out[1] == "2"  # pid namespace: the harness is 1, the test is 2
    assert out[2] == "/sandbox"
    assert out[3].strip() == str([False] * len(hidden))  # ...but not in the jail


def test_environment_of_the_trainer_is_invisible(jail, monkeypatch):
    monkeypatch.setenv("RLTRAIN_SECRET_TOKEN", SECRET)
    code = f"""
import os
print(dict(os.environ))
for path in ("/proc/self/environ", "/proc/1/environ", "/proc/{os.getpid()}/environ"):
    try:
        print(open(path, "rb").read())
    except OSError as exc:
        print("refused", path, type(exc).__name__)
"""
    run = jail.run(code, [""])
    assert run.tests[0].status == "ok"
    assert SECRET not in run.tests[0].output
    assert "refused /proc/1/environ" in run.tests[0].output


def test_infinite_loop_times_out(tight):
    start = time.monotonic()
    run = tight.run("while True:\n    pass", ["", ""])
    assert [t.status for t in run.tests] == ["timeout", "timeout"]
    assert time.monotonic() - start < 6


def test_sleeping_past_the_limit_times_out(tight):
    run = tight.run("import time\ntime.sleep(60)", [""])
    assert run.tests[0].status == "timeout"
    assert run.tests[0].seconds < 3


def test_ignoring_sigxcpu_and_catching_everything_still_times_out(tight):
    code = (
        "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
        "while True:\n    try:\n        pass\n    except BaseException:\n        pass"
    )
    assert tight.run(code, [""]).tests[0].status == "timeout"


def test_fork_bomb_is_contained(tight):
    # Contained by three independent limits, checked in the next test: RLIMIT_NPROC of the
    # jail's own uid, the slot's pids cgroup, and the 0.5 s wall limit + pid-namespace teardown.
    uids = range(tight.uid_base, tight.uid_base + tight.num_workers)
    for code in (
        "import os\nwhile True:\n    os.fork()",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    ):
        run = tight.run(code, ["", ""])
        assert all(t.status in ("runtime_error", "timeout") for t in run.tests), run
    assert _uid_processes(uids) == []  # nothing of the jail's uids survives the run
    assert tight.run("print('still fine')", [""]).tests[0].output == "still fine\n"


def test_process_limit_is_enforced(tight):
    code = """
import os, time
n = 0
for _ in range(40):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    n += 1
print(n)
"""
    run = tight.run(code, [""])
    assert run.tests[0].status == "ok"
    assert int(run.tests[0].output) <= tight.limits.max_processes - 2  # harness + test process
    # The sleepers were killed with the test (not left to run for 30 s).
    assert _uid_processes(range(tight.uid_base, tight.uid_base + tight.num_workers)) == []


def test_memory_bomb_is_a_runtime_error(jail):
    # 128 MiB so the doubling loop reaches the limit fast (first-touch page faults are slow in VMs).
    sandbox = Sandbox(Limits(timeout=5.0, memory_mb=128), isolation="namespace", num_workers=1)
    try:
        for code in ("x = bytearray(10**11)", "x = [0] * 10**9", "s = 'x'\nwhile True:\n    s = s + s"):
            run = sandbox.run(code, [""])
            assert run.tests[0].status == "runtime_error", run
            assert "MemoryError" in run.tests[0].error
        assert sandbox.run("print(1)", [""]).tests[0].output == "1\n"
    finally:
        sandbox.close()


def test_huge_output_is_cut_by_the_file_size_limit(tight):
    run = tight.run("while True:\n    print('x' * 10000)", [""])
    assert run.tests[0].status == "runtime_error"
    assert "File too large" in run.tests[0].error


def test_writes_outside_the_jail_fail_and_its_directory_is_fresh(jail, tmp_path):
    target = tmp_path / "pwned"
    planted = tmp_path / "planted.txt"
    planted.write_text(SECRET)
    planted.chmod(0o644)
    code = f"""
import os
for path in ({str(target)!r}, "/usr/pwned", "/pwned", "/tmp/../pwned"):
    try:
        open(path, "w").write("x")
        print("wrote", path)
    except OSError as exc:
        print("refused", path, type(exc).__name__)
try:
    print(open({str(planted)!r}).read())
except OSError as exc:
    print("unreadable", type(exc).__name__)
print(sorted(os.listdir(".")))
open("mine.txt", "w").write("local")
print(open("mine.txt").read())
"""
    out = jail.run(code, [""]).tests[0].output
    assert "wrote" not in out
    assert SECRET not in out and "unreadable" in out
    assert "[]" in out and "local" in out  # cwd starts empty and is writable
    assert not target.exists()
    assert not os.path.exists("/usr/pwned") and not os.path.exists("/pwned")
    # The next program starts in a new, empty directory.
    assert jail.run("import os\nprint(os.listdir('.'))", [""]).tests[0].output == "[]\n"


def test_killing_the_parent_or_the_trainer_fails(jail):
    code = f"""
import os, signal
for target in (os.getppid(), {os.getpid()}, 1):
    try:
        os.kill(target, signal.SIGKILL)
        print("sent", target)
    except OSError as exc:
        print("refused", target, type(exc).__name__)
"""
    run = jail.run(code, [""])
    # The harness (namespace init) ignores SIGKILL from inside; the trainer's pid does not
    # exist in the jail's pid namespace. Either way the program was scored, we carry on.
    assert run.tests[0].status == "ok"
    assert f"refused {os.getpid()}" in run.tests[0].output
    assert jail.run("print(1)", [""]).tests[0].output == "1\n"


def test_no_network(jail):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    code = (
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "s.sendall(b'leak')\nprint('connected')"
    )
    try:
        run = jail.run(code, [""])
        assert run.tests[0].status == "runtime_error"
        assert "unreachable" in run.tests[0].error.lower() or "refused" in run.tests[0].error.lower()
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()


def test_program_time_limit_and_stop_on_error(jail):
    sandbox = Sandbox(Limits(timeout=5.0, program_timeout=1.0), isolation="namespace", num_workers=1)
    try:
        run = sandbox.run("import time\ntime.sleep(0.6)\nprint(1)", ["", "", ""])
        assert [t.status for t in run.tests][:1] == ["ok"]
        assert run.tests[-1].status == "timeout" and "program time limit" in run.tests[-1].error
    finally:
        sandbox.close()
    run = jail.run("x = int(input())\nprint(1 // x)", ["1", "0", "1"], stop_on_error=True)
    assert [t.status for t in run.tests] == ["ok", "runtime_error", "skipped"]
    assert "ZeroDivisionError" in run.tests[1].error


def test_run_many_keeps_order_and_runs_in_parallel(jail):
    jobs = [Job(f"import time\ntime.sleep(0.3)\nprint({i})", [""]) for i in range(4)]
    start = time.monotonic()
    runs = jail.run_many(jobs)
    assert [r.tests[0].output for r in runs] == [f"{i}\n" for i in range(4)]
    assert time.monotonic() - start < 4 * 0.3 + 1.5  # overlapped


def test_process_isolation_when_asked_for():
    sandbox = Sandbox(Limits(timeout=0.5, program_timeout=5.0), isolation="process", num_workers=1)
    try:
        os.environ["RLTRAIN_SECRET_TOKEN"] = SECRET
        run = sandbox.run(
            "import os, tempfile\nprint(os.getcwd().startswith(tempfile.gettempdir()), dict(os.environ))", [""]
        )
        assert run.tests[0].status == "ok" and SECRET not in run.tests[0].output
        assert run.tests[0].output.startswith("True")
        workdir = sandbox.run("import os\nprint(os.getcwd())", [""]).tests[0].output.strip()
        assert not os.path.exists(workdir)  # removed after the run
        run = sandbox.run("import socket\nsocket.socket()", [""])
        assert run.tests[0].status == "runtime_error" and "PermissionError" in run.tests[0].error
        assert sandbox.run("while True:\n    pass", [""]).tests[0].status == "timeout"
        assert sandbox.run("print(", [""]).compile_error is not None
    finally:
        os.environ.pop("RLTRAIN_SECRET_TOKEN", None)
        sandbox.close()


def test_limits_are_validated():
    with pytest.raises(ValueError, match="timeout"):
        Limits(timeout=0)
    with pytest.raises(ValueError, match="max_processes"):
        Limits(max_processes=1)
    with pytest.raises(ValueError, match="isolation"):
        Sandbox(isolation="docker")


def test_namespace_refused_without_root_fails_closed(monkeypatch):
    import rltrain.rewards.sandbox.pool as sandbox_module  # where the probe looks them up

    monkeypatch.setattr(sandbox_module, "_PROBE_CACHE", {})
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for isolation in ("namespace", "auto"):  # auto refuses too: no silent downgrade to process
        with pytest.raises(NamespaceUnavailable, match="not running as root") as info:
            Sandbox(isolation=isolation, use_cgroups=False)
        assert "\n" not in info.value.reason


def test_a_jail_that_cannot_be_built_fails_closed(jail, monkeypatch):
    """A broken jail (here: its root is a file) is refused by auto, not run as process."""
    import rltrain.rewards.sandbox.pool as sandbox_module  # where the probe looks them up

    monkeypatch.setattr(sandbox_module, "_PROBE_CACHE", {})
    monkeypatch.setattr(sandbox_module, "_jail_ro_paths", lambda sys_path: ["/usr", "/no/such/dir"] + sys_path[:0])
    plan, _ = mount_plan(["/usr", "/no/such/dir"])
    assert plan == [("/usr", "/usr")]  # missing paths are left out, not bound
    monkeypatch.setattr(sandbox_module, "_jail_ro_paths", lambda sys_path: ["/usr"])  # no Python stdlib
    with pytest.raises(NamespaceUnavailable, match="probe|harness|setup"):
        Sandbox(isolation="auto", use_cgroups=False, num_workers=1)


def test_mount_plan_binds_lexical_and_resolved_paths_without_collisions(tmp_path):
    real = tmp_path / "real" / "site-packages"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    nested = real / "pkg"
    nested.mkdir()
    plan, workdir = mount_plan([str(tmp_path / "link" / "site-packages"), str(nested), "/usr"])
    targets = [t for _, t in plan]
    # at its own path and its resolved one; the nested path is covered by its ancestor
    assert sorted(targets) == sorted([str(tmp_path / "link" / "site-packages"), str(real), "/usr"])
    assert dict((t, s) for s, t in plan)[str(tmp_path / "link" / "site-packages")] == str(real)
    assert workdir == "/sandbox"
    for bad in ("/", "/tmp", "/dev", "/dev/null", "/proc/self"):
        with pytest.raises(SandboxError, match="cannot expose"):
            mount_plan([bad])
