"""Hostile programs, round two: a program must not be able to make its own scoring fail, stall or
bloat the trainer while it is judged, or pass a message to another program through what the
jails share (the page cache of the read-only binds, locks on bound files, non-local sockets).

Every attack here failed on the sandbox before these defences (each test's docstring says how).
``test_sandbox_adversarial.test_suite_from_an_interpreter_under_tmp`` runs this file again from
a venv under /tmp.
"""
import json
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
import uuid

import pytest

from rltrain.rewards.base import score_safely
from rltrain.rewards.code import CodeReward, extract_code
from rltrain.rewards.code_compare import stdout_matches
from rltrain.types import Sample
from sandbox_support import NAMESPACE_UNSUPPORTED

TOKEN = uuid.uuid4().hex[:12]
FILE_MB = 2


def _reward(**kwargs) -> CodeReward:
    if NAMESPACE_UNSUPPORTED is not None:
        pytest.skip(f"namespace isolation cannot run on this machine: {NAMESPACE_UNSUPPORTED}")
    options = dict(timeout=2.0, program_timeout=20.0, memory_mb=256, file_mb=FILE_MB, max_processes=8,
                   num_workers=2, isolation="auto")
    options.update(kwargs)
    reward = CodeReward(**options)
    assert reward.sandbox.isolation == "namespace"
    return reward


@pytest.fixture(scope="module")
def reward():
    made = _reward()
    yield made
    made.close()


def _sample(outputs, inputs=None, fn_name=None) -> Sample:
    io = {"inputs": inputs or [""] * len(outputs), "outputs": outputs}
    if fn_name:
        io["fn_name"] = fn_name
    return Sample(id="r2", question="", meta={"input_output": io})


def _fenced(code: str) -> str:
    return f"```python\n{textwrap.dedent(code)}\n```"


def _stdout(reward, code: str) -> str:
    run = reward.sandbox.run(textwrap.dedent(code), [""])
    assert run.compile_error is None and run.tests[0].status == "ok", run
    return run.tests[0].text


# -- 1. a program cannot make its own scoring fail ---------------------------------------------

_SABOTAGE = """
import ctypes, os, resource
libc = ctypes.CDLL(None, use_errno=True)
refused = []
# pid 1 is the harness (the jail's init); the parent of this test process is the harness too.
for pid in sorted({1, os.getppid()}):
    for res, value in ((resource.RLIMIT_AS, 1 << 20), (resource.RLIMIT_NOFILE, 3), (resource.RLIMIT_FSIZE, 1),
                       (resource.RLIMIT_CPU, 1), (resource.RLIMIT_NPROC, 1), (resource.RLIMIT_DATA, 1 << 20)):
        try:
            resource.prlimit(pid, res, (value, value))
        except OSError:
            refused.append("prlimit")
    for call, args in (("setpriority", (0, pid, 19)), ("setpriority", (1, 0, 19)), ("setpriority", (2, os.getuid(), 19)),
                       ("sched_setaffinity", (pid, 8, ctypes.byref(ctypes.c_ulong(1)))),
                       ("sched_setscheduler", (pid, 5, ctypes.byref(ctypes.c_int(0)))),
                       ("ioprio_set", (1, pid, 7 << 13)), ("ioprio_set", (3, os.getuid(), 7 << 13))):
        if call == "ioprio_set":  # no libc wrapper
            ret = libc.syscall({"x86_64": 251, "aarch64": 30}[os.uname().machine], *args)
        else:
            ret = getattr(libc, call)(*args)
        if ret != 0:
            refused.append(call)
print("ok")
"""


def test_resource_calls_cannot_reach_the_harness(reward):
    """Before: seccomp allowed prlimit64 (and setpriority, sched_setscheduler, ioprio_set) on
    another pid, and the harness ran under the program's uid: a program cut the harness's
    RLIMIT_NOFILE/AS and the harness died before reporting the next test, which the trainer
    counted as a sandbox failure. Now the calls are refused and a correct program still
    passes all three tests after trying."""
    out = score_safely(reward, [_sample(["ok\n"] * 3)], [_fenced(_SABOTAGE)], max_fail_fraction=1.0)
    assert out.info["failed"] == [False], out.info["error"]
    assert out.info["code/outcomes"] == [["pass"] * 3], out.info
    assert out.scores == [1.0]
    # The calls on itself still work (a program may lower its own limits).
    assert _stdout(reward, "import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
                           "import os\nos.nice(1)\nprint(resource.getrlimit(resource.RLIMIT_NOFILE)[0])") == "64\n"


def _uids(pid: int) -> tuple[int, ...] | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(tuple(map(int, line.split()[1:])) for line in fh if line.startswith("Uid:"))
    except (OSError, StopIteration):
        return None


def test_the_harness_runs_under_another_uid_than_the_program(reward):
    """Defence in depth: the harness's real and effective uid are not the program's, so a call
    on another pid that the filter let through would still find a process of another user."""
    import threading

    sandbox = reward.sandbox
    done = []
    thread = threading.Thread(target=lambda: done.append(sandbox.run("import time\ntime.sleep(1)\nprint(1)", [""])))
    thread.start()
    jail_uids = range(sandbox.uid_base, sandbox.uid_base + 1024)
    seen = set()
    while thread.is_alive():
        for entry in os.listdir("/proc"):
            uids = _uids(int(entry)) if entry.isdigit() else None
            if uids and (uids[0] in jail_uids or uids[2] in jail_uids):
                seen.add(uids)
        time.sleep(0.05)
    thread.join()
    assert done[0].tests[0].text == "1\n"
    programs = {u for u in seen if len(set(u)) == 1}  # real = effective = saved = fs
    harnesses = seen - programs
    assert programs and harnesses, seen
    program_uid = next(iter(programs))[0]
    assert all(h[0] != program_uid and h[1] != program_uid for h in harnesses), seen


def test_harness_death_after_the_program_started_is_the_programs_zero(reward):
    """A harness that dies once the program runs (however it was made to) costs that program
    its score, never a sandbox error that counts against ``max_fail_fraction``."""
    from rltrain.rewards.sandbox.protocol import _parse_run

    stream = b'{"event": "ready", "nbytes": 0}\nTraceback (most recent call last):\nMemoryError\n'
    run = _parse_run(stream, 2, killed=False)
    assert [t.status for t in run.tests] == ["runtime_error", "runtime_error"]
    # Before the program ran, it is the sandbox's failure.
    from rltrain.rewards.sandbox import SandboxError

    with pytest.raises(SandboxError):
        _parse_run(b"Traceback (most recent call last):\nOSError: mount failed\n", 2, killed=False)


# -- 2. judging is linear in the output and bounded in time -------------------------------------

_JUDGE_SCRIPT = """
import sys, time
from rltrain.rewards.code import extract_code
from rltrain.rewards.code_compare import call_result_matches, stdout_matches
n = int(sys.argv[1])
cases = [
    (b"0" * n + b"x", "5"), (b"-" + b"0" * n + b"x", "5"), (b"1" * n + b"x", "1.5"), (b"1" * n + b".x", "1.5"),
    (b"." + b"1" * n + b"e", "0.5"), (b"1" * n + b"e+" + b"1" * n + b"x", "1e5"), (b"0" * n, "0"),
    (b"0" * n + b"7", "7"), (b"1." + b"0" * n + b"1", "1.0"),
]
results = []
start = time.perf_counter()
for got, want in cases:
    results.append(stdout_matches(got, want, 1e-6))
fence = "```" + "a" * n
extract_code(fence)
extract_code("```python\\n" + "x" * n)
extract_code("```" * (n // 3))
print(round(time.perf_counter() - start, 3), results)
"""


def test_judging_hostile_tokens_is_linear():
    """Before: ``0*(\\d+)`` and ``\\d+\\.?\\d*`` backtracked quadratically: one 40,000-digit
    token took ~27 s of trainer CPU (hours at the 16 MiB output cap), and the fence regex
    took 1.6 s on 64 K characters without a newline. Now each of these 2 MiB tokens costs
    milliseconds; the subprocess's timeout turns a quadratic parser into a failure, not a hang."""
    n = 2 * 2**20
    proc = subprocess.run([sys.executable, "-c", _JUDGE_SCRIPT, str(n)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seconds, results = proc.stdout.split(" ", 1)
    assert results.strip() == str([False, False, False, False, False, False, True, True, True])
    assert float(seconds) < 10.0  # linear: ~0.1 s on a 2-core machine; quadratic: hours


def test_numbers_still_compare_as_before():
    cases = [
        ("5", "5", True), ("005", "5", True), ("-0", "0", True), ("+5", "5", True), ("-5", "5", False),
        ("1.0000001", "1", True), ("1.1", "1", False), ("1e3", "1000", True), (".5", "0.5", True),
        ("5.", "5", True), ("inf", "inf", True), ("nan", "NaN", False), ("nan", "nan", True), ("1_0", "10", False), ("0x10", "16", False),
        ("١٢", "12", False), ("12", "12.0", True), ("1e", "1", False), ("e5", "1e5", False), ("--5", "5", False),
    ]
    for got, want, same in cases:
        assert stdout_matches(got, want) is same, (got, want)
        assert stdout_matches(got.encode(), want) is same, (got, want)


def test_fence_extraction_unchanged():
    assert extract_code("```python\nprint(1)\n```") == "print(1)\n"
    assert extract_code("text ```py3 run\nA\n``` and ```\nB\n```") == "A\n"
    assert extract_code("```\nA\n``` ```c\nB\n```") == "B\n"
    assert extract_code("```python\nunclosed") == "unclosed"
    assert extract_code("no fence") is None
    assert extract_code("```python no newline") is None
    assert extract_code("````python\nx\n````") == "x\n"


def test_judging_time_is_bounded_and_counted():
    """A program whose judging passes ``judge_timeout`` scores 0, marked ``code/judge_timeout``
    (not ``failed``: the program's output is to blame, not the reward)."""
    reward = _reward(num_workers=1, judge_timeout=1e-9)
    try:
        lines = "\n".join(str(i) for i in range(20000))
        out = reward([_sample([lines + "\n"])], [_fenced("print('\\n'.join(str(i) for i in range(20000)))")])
        assert out.scores == [0.0]
        assert out.info["code/judge_timeout"] == [True]
        assert out.info["failed"] == [False]
    finally:
        reward.close()


# -- 3. output costs bytes, once, per running program -------------------------------------------

def test_trainer_memory_is_bounded_by_workers_not_batch():
    """Before: every output became a Python str (4 bytes per character once one wide character
    was in it) and every run of the batch was held until judging: ~4 x cap x batch. Now outputs
    stay bytes and each run is released once judged: the peak is bounded by the workers."""
    reward = _reward(num_workers=2, timeout=4.0)
    code = f"import sys\nsys.stdout.buffer.write(b'\\xff' * ({FILE_MB} * 2**20 - 8192) + '\\U0001F600'.encode())"
    batch = 12
    try:
        reward([_sample(["x"])], [_fenced("print(1)")])  # warm-up
        tracemalloc.start()
        out = reward([_sample(["x"])] * batch, [_fenced(code)] * batch)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        reward.close()
    assert out.scores == [0.0] * batch and out.info["failed"] == [False] * batch, out.info["error"]
    assert out.info["code/output_truncated"] == [False] * batch
    cap = FILE_MB * 2**20
    # per worker: the received stream and the outputs cut from it (2 x cap), plus slack
    assert peak < 2 * 2 * cap + 4 * 2**20, f"peak {peak / 2**20:.1f} MiB for a batch of {batch}"


# -- 4. programs cannot talk to each other -------------------------------------------------------

def _probe_file() -> str:
    """A file every jail can read (the stdlib is bound read-only), of at least 64 pages."""
    import pydoc_data.topics

    return pydoc_data.topics.__file__


def test_page_cache_carries_nothing_between_programs(reward):
    """Before: a program evicted pages of a bound file (posix_fadvise DONTNEED, or
    madvise(MADV_PAGEOUT) on a mapping) and a later program read the bits back by probing
    residency (preadv2 RWF_NOWAIT, mincore). Now each of those calls is refused."""
    path = _probe_file()
    bits = [int(b) for b in f"{int(TOKEN[:8], 16):032b}"]
    sender = f"""
    import ctypes, mmap, os
    path, bits = {path!r}, {bits!r}
    fd = os.open(path, os.O_RDONLY)
    os.read(fd, 64 * 4096)  # all resident
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    addr = libc.mmap(None, 32 * 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    for i, bit in enumerate(bits):
        if bit:
            try:
                os.posix_fadvise(fd, i * 4096, 4096, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            libc.madvise(ctypes.c_void_p(addr + i * 4096), ctypes.c_size_t(4096), 21)  # MADV_PAGEOUT
    print("sent")
    """
    receiver = f"""
    import ctypes, errno, mmap, os
    path = {path!r}
    fd = os.open(path, os.O_RDONLY)
    got = []
    for i in range(32):
        buf = bytearray(1)
        try:
            os.preadv(fd, [buf], i * 4096, os.RWF_NOWAIT)
            got.append("0")
        except BlockingIOError:
            got.append("1")
        except OSError:
            got.append("E")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    addr = libc.mmap(None, 32 * 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    vec = (ctypes.c_ubyte * 32)()
    ret = libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(32 * 4096), vec)
    mincore = "".join(str(1 - (v & 1)) for v in vec) if ret == 0 else errno.errorcode[ctypes.get_errno()]
    print("".join(got), mincore)
    """
    assert _stdout(reward, sender) == "sent\n"
    rwf, mincore = _stdout(reward, receiver).split()
    token = "".join(map(str, bits))
    assert rwf != token and mincore != token
    assert rwf == "E" * 32 and mincore == "EPERM", (rwf, mincore)
    assert _stdout(reward, "import os\ntry:\n    os.posix_fadvise(0, 0, 0, os.POSIX_FADV_DONTNEED)\n    print('allowed')\n"
                           "except OSError as e:\n    print(e.errno)") == f"{1}\n"  # EPERM


def test_locks_on_bound_files_are_not_shared(reward):
    """Before: two jails running at once saw each other's flock on the same bound file."""
    path = _probe_file()
    holder = f"""
    import fcntl, os, time
    fd = os.open({path!r}, os.O_RDONLY)
    out = []
    for how in ("flock", "lockf", "ofd"):
        try:
            if how == "flock":
                fcntl.flock(fd, fcntl.LOCK_SH)
            elif how == "lockf":
                fcntl.lockf(fd, fcntl.LOCK_SH)
            else:
                fcntl.fcntl(fd, 37, bytes(32))  # F_OFD_SETLK
            out.append(how)
        except OSError as exc:
            out.append(str(exc.errno))
    time.sleep(1.5)
    print(" ".join(out))
    """
    prober = f"""
    import fcntl, os, time
    time.sleep(0.5)
    fd = os.open({path!r}, os.O_RDWR if os.access({path!r}, os.W_OK) else os.O_RDONLY)
    seen = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        seen.append("free")
    except BlockingIOError:
        seen.append("LOCKED")
    except OSError as exc:
        seen.append(str(exc.errno))
    try:
        import struct
        res = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0))
        seen.append("LOCKED" if struct.unpack("hhqqi", res[:struct.calcsize("hhqqi")])[0] != fcntl.F_UNLCK else "free")
    except OSError as exc:
        seen.append(str(exc.errno))
    print(" ".join(seen))
    """
    from rltrain.rewards.sandbox import Job

    runs = reward.sandbox.run_many([Job(textwrap.dedent(holder), [""]), Job(textwrap.dedent(prober), [""])])
    assert [r.tests[0].status for r in runs] == ["ok", "ok"], runs
    held, seen = runs[0].tests[0].text.split(), runs[1].tests[0].text.split()
    assert "LOCKED" not in seen, seen
    assert held == ["1", "1", "1"], held  # EPERM: no lock is ever taken on a shared file


def test_only_local_socket_families(reward):
    """Before: AF_VSOCK sockets (outside the network namespace) could bind a host vsock port."""
    code = """
    import socket
    made = []
    for family in (40, 16, 17, 38, 42, 44, 9):  # vsock, netlink, packet, alg, qipcrtr, xdp, x25
        try:
            socket.socket(family, socket.SOCK_STREAM if family == 40 else socket.SOCK_RAW).close()
            made.append(family)
        except OSError:
            pass
    for family in (40, 16):
        try:
            socket.socketpair(family, socket.SOCK_STREAM)
            made.append(("pair", family))
        except OSError:
            pass
    a, b = socket.socketpair()
    a.sendall(b"x")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    print(made, b.recv(1), s.family == socket.AF_INET)
    """
    assert _stdout(reward, code) == "[] b'x' True\n"


def test_ldt_memfd_secret_memfd_and_sysv_shm_are_refused(reward):
    """``modify_ldt`` and ``memfd_secret`` serve no scoring program; ``memfd_create`` and SysV
    shared memory would hold memory outside RLIMIT_AS where no memory cgroup exists."""
    code = """
    import ctypes, errno, os, platform
    libc = ctypes.CDLL(None, use_errno=True)
    nr = {"x86_64": {"modify_ldt": 154, "memfd_secret": 447, "shmget": 29},
          "aarch64": {"memfd_secret": 447, "shmget": 194}}[platform.machine()]
    out = {}
    for name, number in nr.items():
        args = {"modify_ldt": (0, 0, 0), "memfd_secret": (0,), "shmget": (0, 1 << 20, 0o1600)}[name]
        ctypes.set_errno(0)
        ret = libc.syscall(ctypes.c_long(number), *[ctypes.c_long(a) for a in args])
        out[name] = "returned" if ret >= 0 else errno.errorcode[ctypes.get_errno()]
    try:
        os.memfd_create("hoard")
        out["memfd_create"] = "returned"
    except OSError as exc:
        out["memfd_create"] = errno.errorcode[exc.errno]
    print(sorted(set(out.values())))
    """
    assert _stdout(reward, code) == "['EPERM']\n"


# -- 5. what a test process can read ------------------------------------------------------------

def test_a_test_sees_only_its_own_input(reward):
    """Before: each test process was a fork of a harness holding the whole request: every test's
    input, and cgroup paths carrying the trainer's pid, were in its memory."""
    secret_other = f"other-input-{TOKEN}"
    cgroup_name = f"rltrain-sandbox-{os.getpid()}-"
    # The needles are spelled backwards in the source (which the harness holds) and turned
    # round inside a function, so only a copy from elsewhere can match.
    code = f"""
    import gc, sys
    def main():
        text = sys.stdin.read()
        needles = ["".join(reversed(x)) for x in ({secret_other[::-1]!r}, {cgroup_name[::-1]!r})]
        found = [False, False]
        skip = (globals(), needles, found)
        for obj in gc.get_objects():
            if obj is skip or any(obj is s for s in skip):
                continue
            try:
                r = repr(obj)
            except Exception:
                continue
            for i, needle in enumerate(needles):
                found[i] = found[i] or needle in r
        print(text.strip() == "mine", *found)
    main()
    """
    run = reward.sandbox.run(textwrap.dedent(code), ["mine\n", secret_other + "\n"])
    assert run.tests[0].status == "ok", run
    assert run.tests[0].text == "True False False\n"


def test_hostile_json_costs_memory_bounded_by_the_expected_value():
    """Before: a return value of 2 MiB of ``[[],[],...]`` was decoded whole (~40 MiB of lists in
    the trainer) before being compared with ``[1]``. Now text far longer than any JSON the
    expected value could have is a mismatch without being decoded; a long right answer passes."""
    from rltrain.rewards.code_compare import call_result_matches

    hostile = b"[" + b"[]," * (2 * 2**20 // 3) + b"[]]"
    tracemalloc.start()
    try:
        assert call_result_matches(hostile, [1]) is False
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{peak / 2**20:.1f} MiB"
    floats = [0.1 * i for i in range(1, 2000)]
    assert call_result_matches(json.dumps([x + 1e-12 for x in floats]).encode(), floats)
    assert call_result_matches(json.dumps([1.0000000000000002] * 1000).encode(), [1] * 1000)
