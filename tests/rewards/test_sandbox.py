"""The code sandbox against hostile programs: each is contained, scored as a failure with the
right status, and the test process (standing in for the trainer) carries on.

Namespace isolation needs root; ``sandbox_support`` decides once whether this machine can run
it. Where it can, a jail that fails to build fails these tests; where it cannot, they skip
saying why, and the process-isolation tests still run.
"""
import errno
import json
import os
import socket
import subprocess
import sys
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
    assert [t.text for t in run.tests] == ["3\n", "42\n"]

    run = jail.run("class Solution:\n    def f(self, a, b):\n        return (a, [b])", [[1, 2]], fn_name="f")
    assert run.tests[0].text == "[1, [2]]"  # tuples come back as JSON lists

    run = jail.run("def f(:\n", [""])
    assert run.compile_error is not None and run.compile_error.startswith("SyntaxError")


def test_runs_as_unprivileged_uid_in_its_own_namespaces(jail, repo_root):
    hidden = [os.path.join(repo_root, "pyproject.toml"), os.path.abspath(__file__), "/etc/passwd", "/proc/self/status"]
    assert all(os.path.exists(p) for p in hidden)  # they exist on the host...
    code = f"import os\nprint(os.getuid(), os.getpid(), os.getcwd(), [os.path.exists(p) for p in {hidden!r}])"
    out = jail.run(code, [""]).tests[0].text.split(maxsplit=3)
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
    assert SECRET not in run.tests[0].text
    assert "refused /proc/1/environ" in run.tests[0].text


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
    assert tight.run("print('still fine')", [""]).tests[0].text == "still fine\n"


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
    # RLIMIT_NPROC counts the program's uid: the test process and its children (the harness
    # runs under another uid; the pids cgroup counts launcher + harness + these).
    assert int(run.tests[0].text) <= tight.limits.max_processes - 1
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
        assert sandbox.run("print(1)", [""]).tests[0].text == "1\n"
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
    out = jail.run(code, [""]).tests[0].text
    assert "wrote" not in out
    assert SECRET not in out and "unreadable" in out
    assert "[]" in out and "local" in out  # cwd starts empty and is writable
    assert not target.exists()
    assert not os.path.exists("/usr/pwned") and not os.path.exists("/pwned")
    # The next program starts in a new, empty directory.
    assert jail.run("import os\nprint(os.listdir('.'))", [""]).tests[0].text == "[]\n"


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
    assert f"refused {os.getpid()}" in run.tests[0].text
    assert jail.run("print(1)", [""]).tests[0].text == "1\n"


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
    assert [r.tests[0].text for r in runs] == [f"{i}\n" for i in range(4)]
    assert time.monotonic() - start < 4 * 0.3 + 1.5  # overlapped


def test_process_isolation_when_asked_for():
    sandbox = Sandbox(Limits(timeout=0.5, program_timeout=5.0), isolation="process", num_workers=1)
    try:
        os.environ["RLTRAIN_SECRET_TOKEN"] = SECRET
        run = sandbox.run(
            "import os, tempfile\nprint(os.getcwd().startswith(tempfile.gettempdir()), dict(os.environ))", [""]
        )
        assert run.tests[0].status == "ok" and SECRET not in run.tests[0].text
        assert run.tests[0].text.startswith("True")
        workdir = sandbox.run("import os\nprint(os.getcwd())", [""]).tests[0].text.strip()
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
    with pytest.raises(NamespaceUnavailable, match="not running as root"):
        Sandbox(use_cgroups=False)  # the default is the jail


def test_the_launcher_runs_uncontained_only_when_told_process():
    """A request whose isolation is neither ``namespace`` nor ``process`` is refused by the
    launcher before the program runs, not treated as ``process``."""
    sandbox = Sandbox(Limits(timeout=5.0), isolation="process", num_workers=1, use_cgroups=False)
    try:
        assert sandbox.run("print(1)", [""]).tests[0].text == "1\n"
        for isolation in ("auto", "Namespace", ""):
            with pytest.raises(SandboxError, match=f"unknown isolation {isolation!r}"):
                sandbox._run_one(Job("print(1)", [""]), 0, isolation, sandbox.limits)
    finally:
        sandbox.close()


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


def test_mounts_under_an_exposed_path_are_read_only_too(tmp_path):
    """World-writable tmpfs mounts under an exposed import path come into the jail with the
    recursive bind; there they are read-only, nosuid and nodev like the path itself, and
    nothing a program writes reaches the host."""
    exposed = tmp_path / "site-packages"
    inner = exposed / "mounted"
    deeper = inner / "deeper"
    exposed.mkdir()
    mounted = []
    try:
        for path in (inner, deeper):  # deeper is made on (and mounted over) the inner tmpfs
            path.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777,size=1m", "tmpfs", str(path)], check=True)
            mounted.append(path)
        sandbox = namespace_sandbox(Limits(timeout=5.0), num_workers=1, use_cgroups=False, import_paths=[str(exposed)])
        try:
            code = f"""
import os
for d in {[str(exposed), str(inner), str(deeper)]!r}:
    try:
        open(d + "/pwned", "w").write("x")
        print("wrote", d)
    except OSError as exc:
        print("refused", d, exc.errno)
    f = os.statvfs(d).f_flag
    print("flags", d, bool(f & os.ST_RDONLY), bool(f & os.ST_NOSUID), bool(f & os.ST_NODEV))
"""
            run = sandbox.run(code, [""])
        finally:
            sandbox.close()
        assert run.tests[0].status == "ok", run
        lines = run.tests[0].text.splitlines()
        for d in (exposed, inner, deeper):
            assert f"refused {d} {errno.EROFS}" in lines, lines  # EROFS: there, and read-only
            assert f"flags {d} True True True" in lines, lines
        assert [str(d) for d in (exposed, inner, deeper) if (d / "pwned").exists()] == []
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], check=False)


_READ_ONLY_SCRIPT = """
import os, sys
from rltrain.rewards.sandbox import launcher
from rltrain.rewards.sandbox.libc import (
    _CLONE_NEWNS, _MS_BIND, _MS_NODEV, _MS_NOSUID, _MS_PRIVATE, _MS_RDONLY, _MS_REC, _MS_REMOUNT, _check, _libc, _mount,
)

source, target, how = sys.argv[1:]
libc = _libc()
_check(libc.unshare(_CLONE_NEWNS), "unshare")  # everything below dies with this process
_mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)
os.mkdir(source + "/sub")
_mount(libc, "tmpfs", source + "/sub", "tmpfs", 0, "mode=1777,size=1m")
os.mkdir(source + "/sub/deeper")
_mount(libc, "tmpfs", source + "/sub/deeper", "tmpfs", 0, "mode=1777,size=1m")
_mount(libc, source, target, None, _MS_BIND | _MS_REC)
if how == "top_only":  # the old jail build
    _mount(libc, None, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
else:
    getattr(launcher, how)(libc, target)
try:
    launcher._check_read_only([target])
    print("checked")
except OSError as exc:
    print("refused:", exc)
for d in ("top", "sub", "sub/deeper"):
    try:
        open(target + "/" + d.replace("top", "") + "/x", "w").write("x")
        print("wrote", d)
    except OSError as exc:
        print("erofs" if exc.errno == 30 else exc.errno, d)
"""


@pytest.mark.parametrize("how", ["_read_only_by_setattr", "_read_only_by_remount", "top_only"])
def test_each_way_of_making_a_bind_read_only_covers_its_submounts(tmp_path, how):
    """mount_setattr(AT_RECURSIVE) and its fallback (remount each mount of /proc/self/mountinfo)
    leave no writable mount under the bind; remounting only the top one (the old way) does,
    and ``_check_read_only`` refuses it. In a private mount namespace of a child process."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount (runs as root, as CI does)")
    (tmp_path / "source").mkdir()
    (tmp_path / "target").mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _READ_ONLY_SCRIPT, str(tmp_path / "source"), str(tmp_path / "target"), how],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    if how == "top_only":
        assert lines[0].startswith("refused:") and str(tmp_path / "target" / "sub") in lines[0], lines
        assert lines[1:] == ["erofs top", "wrote sub", "wrote sub/deeper"]  # what the check caught
    else:
        assert lines == ["checked", "erofs top", "erofs sub", "erofs sub/deeper"]
    assert os.listdir(tmp_path / "source" / "sub") == []  # the tmpfs mounts died with the namespace


# The calls added to the seccomp deny list, numbered from the kernel's own tables
# (arch/x86/entry/syscalls/syscall_64.tbl; include/uapi/asm-generic/unistd.h for aarch64),
# written out here independently of ``seccomp._SYSCALLS``.
_NEWLY_DENIED = {
    "x86_64": {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
               "pidfd_getfd": 438, "mount_setattr": 442, "kexec_file_load": 320, "reboot": 169,
               "kcmp": 312, "process_madvise": 440},
    "aarch64": {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
                "pidfd_getfd": 438, "mount_setattr": 442, "kexec_file_load": 294, "reboot": 142,
                "kcmp": 272, "process_madvise": 440},
}
# Arguments with which each call fails doing nothing, and without the filter with an error
# other than EPERM: invalid flags, bad fds, no such pid, wrong reboot magic (fsopen, fsmount,
# fspick, reboot and kexec_file_load check a capability first, so this holds as root only).
_HARMLESS_ARGS = {
    "open_tree": (-1, None, 0xFFFFFFFF), "move_mount": (-1, None, -1, None, 0xFFFFFFFF),
    "fsopen": (None, 0xFFFFFFFF), "fsconfig": (-1, 0, None, None, 0), "fsmount": (-1, 0xFFFFFFFF, 0),
    "fspick": (-1, None, 0xFFFFFFFF), "pidfd_getfd": (-1, 0, 0xFFFFFFFF),
    "mount_setattr": (-1, None, 0xFFFFFFFF, None, 0), "kexec_file_load": (-1, -1, 0, None, 0xFFFFFFFF),
    "reboot": (0, 0, 0, None),
    "kcmp": (-1, -1, 0, 0, 0), "process_madvise": (-1, None, 0, 0, 0xFFFFFFFF),
}
# Refused before any capability check, so not EPERM for anyone: EINVAL (flags), ESRCH (kcmp's pids).
_CHECKED_BEFORE_CAPABILITIES = (
    "open_tree", "move_mount", "fsconfig", "pidfd_getfd", "mount_setattr", "kcmp", "process_madvise",
)


def _syscall_program() -> str:
    calls = {name: (nr, _HARMLESS_ARGS[name]) for name, nr in _NEWLY_DENIED[os.uname().machine].items()}
    return f"""
import ctypes, errno, json
libc = ctypes.CDLL(None, use_errno=True)
out = {{}}
for name, (nr, args) in {calls!r}.items():
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a or 0) for a in args])
    out[name] = "returned" if ret >= 0 else errno.errorcode[ctypes.get_errno()]
print(json.dumps(out))
"""


@pytest.mark.parametrize("isolation", ["namespace", "process"])
def test_new_mount_api_kexec_reboot_and_cross_process_calls_are_denied(jail, isolation):
    """Also pidfd_getfd, kcmp and process_madvise: in ``process`` mode the program runs as the
    trainer's uid, so these would reach the trainer's fds, kernel pointers and memory."""
    if os.uname().machine not in _NEWLY_DENIED:
        pytest.skip(f"no seccomp table for {os.uname().machine} (runs on x86_64 and aarch64)")
    sandbox = jail if isolation == "namespace" else Sandbox(Limits(timeout=5.0), isolation="process", num_workers=1)
    try:
        run = sandbox.run(_syscall_program(), [""])
    finally:
        if sandbox is not jail:
            sandbox.close()
    assert run.tests[0].status == "ok", run
    assert json.loads(run.tests[0].text) == {name: "EPERM" for name in _HARMLESS_ARGS}
    # The test's power: unfiltered, these calls fail otherwise (all of them, as root).
    unfiltered = json.loads(subprocess.run([sys.executable, "-c", _syscall_program()], capture_output=True,
                                           text=True, check=True, timeout=60).stdout)
    assert [n for n in _CHECKED_BEFORE_CAPABILITIES if unfiltered[n] == "EPERM"] == [], unfiltered
    if os.geteuid() == 0:
        assert [n for n, e in unfiltered.items() if e == "EPERM"] == [], unfiltered


_NEWER_THAN_SOME_HEADERS = {"cachestat": 451}  # the same number on x86_64 and arm64


def test_seccomp_syscall_numbers_match_the_kernel_headers():
    """Every number of each seccomp table, against the kernel UAPI headers installed here."""
    import re

    from rltrain.rewards.sandbox.seccomp import _SYSCALLS

    headers = {
        "x86_64": ["/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm/unistd_64.h"],
        "aarch64": ["/usr/include/asm-generic/unistd.h"],  # arm64's table is the generic one
    }
    checked = []
    for arch, paths in headers.items():
        path = next((p for p in paths if os.path.exists(p)), None)
        if path is None:
            continue
        with open(path) as fh:
            defines = re.finditer(r"#define __NR(?:3264)?_(\w+)\s+(\d+)", fh.read())
        numbers = {m.group(1): int(m.group(2)) for m in defines}
        if "mount_setattr" not in numbers:
            continue  # headers older than Linux 5.12
        table = _SYSCALLS[arch][1]
        assert set(_NEWLY_DENIED[arch]) <= set(table), arch
        # Calls newer than these headers, numbered from the kernel's tables (cachestat: Linux 6.5).
        newer = {name: nr for name, nr in _NEWER_THAN_SOME_HEADERS.items() if name not in numbers}
        assert {name: numbers.get(name, newer.get(name)) for name in table} == table, path
        assert {name: table[name] for name in _NEWLY_DENIED[arch]} == _NEWLY_DENIED[arch]
        checked.append(arch)
    if not checked:
        pytest.skip(f"no kernel headers of Linux 5.12+ here (looked for {headers}); runs where they are "
                    "installed (Debian: linux-libc-dev)")


def test_seccomp_filter_too_long_for_its_jumps_is_refused_clearly():
    """The filter is one flat chain whose jumps (one byte) must reach the returns at its end.
    The real tables fit; the longest list the message allows builds; one more call is refused
    with that message (unchecked, the encoder's struct.error would be all one saw)."""
    import re
    import struct

    from rltrain.rewards.sandbox.seccomp import _ARG_RULES, _DENIED_SYSCALLS, _SYSCALLS, _build_filter

    for machine, (arch, numbers) in _SYSCALLS.items():
        denied = [name for name in _DENIED_SYSCALLS if name in numbers]  # modify_ldt: x86 only
        prog = _build_filter(arch, numbers, denied, refuse_x32=machine == "x86_64")
        assert len(prog) // 8 == len(denied) + (13 if machine == "x86_64" else 12)
        # The real filter, with the argument rules, still reaches its returns.
        prog = _build_filter(arch, numbers, denied, refuse_x32=machine == "x86_64", arg_rules=_ARG_RULES)
        jumps = [jump for _, jt, jf, _ in struct.iter_unpack("=HBBI", prog) for jump in (jt, jf)]
        assert max(jumps) < 255, machine  # a headroom of 255 - max(jumps) calls

    arch, numbers = _SYSCALLS["x86_64"]
    numbers = {**numbers, **{f"call{i}": 1000 + i for i in range(300)}}
    with pytest.raises(ValueError, match="classic-BPF jump reaches at most 255") as info:
        _build_filter(arch, numbers, [f"call{i}" for i in range(300)], refuse_x32=True)
    assert "300 denied syscalls" in str(info.value)
    fit = int(re.search(r"at most (\d+) denied syscalls fit", str(info.value)).group(1))
    assert len(_DENIED_SYSCALLS) < fit < 300
    assert len(_build_filter(arch, numbers, [f"call{i}" for i in range(fit)], refuse_x32=True)) // 8 == fit + 13
    with pytest.raises(ValueError, match=f"{fit + 1} denied syscalls"):
        _build_filter(arch, numbers, [f"call{i}" for i in range(fit + 1)], refuse_x32=True)
