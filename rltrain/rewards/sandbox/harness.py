"""The jail side from the first test on: compile the program once, then run each test in a
forked child (stdin, stdout and stderr on memfds, CPU-time and file-size rlimits), stop it at
the wall-clock limit, kill whatever it left behind, and emit one event per test with its
output, within what is left of the program's output cap. ``HEADER`` (imports every program
gets) and the ``process`` isolation guard are here too.

What a test process can reach of the harness: it is a fork of it, so it holds the harness's
memory; the harness therefore holds no test input (they wait in a memfd, ``inputs_fd``, and
each is copied kernel-side into its own test's stdin) and none of the launcher's cgroup paths.
In a namespace jail the test process then switches to the program's uid, which the harness
keeps only as its saved uid. The five memfds a test uses are made once per program, before the
seccomp filter (which refuses memfd_create to everyone in the jail), and emptied between tests.
"""
from __future__ import annotations

import json
import math
import os
import resource
import select
import signal
import sys
import time

from .libc import _PR_SET_PDEATHSIG, _libc, _set_rlimit
from .protocol import STATUS_OK, STATUS_RUNTIME_ERROR, STATUS_SKIPPED, STATUS_TIMEOUT, _emit
from .types import _MB

# Imports that APPS-style solutions assume (hendrycks/apps prepends a similar header). They are
# executed into the program's globals before the program, not pasted into its source, so
# ``from __future__`` lines and line numbers stay intact.
HEADER = """\
import sys, math, itertools, collections, functools, heapq, bisect, string, re, random
import fractions, decimal, operator, copy
from collections import Counter, OrderedDict, defaultdict, deque
from functools import lru_cache, reduce, cmp_to_key
from heapq import heappush, heappop, heapify, heappushpop, nlargest, nsmallest
from bisect import bisect_left, bisect_right, insort
from itertools import accumulate, combinations, permutations, product
from math import sqrt, ceil, floor, gcd, inf, log, log2, exp
from typing import List, Dict, Tuple, Set, Optional
"""

_STDERR_TAIL = 4096  # bytes of a failing test's stderr read back for its error line


def _guard_source() -> str:
    """The ``process`` isolation preamble: disable the obvious ways out. Not a security boundary."""
    return """\
def _rltrain_guard():
    import builtins, os, shutil, socket, subprocess
    def refuse(*args, **kwargs):
        raise PermissionError("disabled in the sandbox")
    for name in ("socket", "socketpair", "create_connection", "create_server", "fromfd"):
        setattr(socket, name, refuse)
    for name in ("fork", "forkpty", "kill", "killpg", "system", "popen", "execv", "execve", "execvp",
                 "spawnv", "spawnve", "posix_spawn", "posix_spawnp", "setuid", "putenv", "chroot",
                 "rmdir", "removedirs", "fchdir", "chdir"):
        if hasattr(os, name):
            setattr(os, name, refuse)
    subprocess.Popen = refuse
    shutil.rmtree = refuse
    shutil.move = refuse
_rltrain_guard()
del _rltrain_guard
"""


def test_memfds() -> dict[str, int]:
    """The memfds every test of a program reuses (made before the seccomp filter refuses
    memfd_create): the test's stdin, stdout, stderr, return value and call arguments."""
    return {name: os.memfd_create(name) for name in ("stdin", "stdout", "stderr", "result", "args")}


def _run_tests(req: dict, namespace: bool, inputs_fd: int, memfds: dict[str, int]) -> None:
    """Run every test of ``req`` (its inputs lie in ``inputs_fd``, one after another, sized by
    ``req["input_sizes"]``) and emit one event each. ``ready`` goes out first, once the program
    compiled: from then on a harness that dies is the program's doing (``protocol._parse_run``)."""
    source = req["code"]
    if not namespace:
        source = _guard_source() + source
    try:
        compiled = compile(source, "<solution>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError) as exc:
        _emit({"event": "compile_error", "error": f"{type(exc).__name__}: {exc}"[:500]})
        return
    header = compile(HEADER, "<header>", "exec")
    exec(header, {})  # import once here; the forked tests reuse sys.modules
    limits = req["limits"]
    deadline = time.monotonic() + float(limits["program_timeout"])
    budget = [int(float(limits["output_mb"]) * _MB)]  # output bytes left for this program
    stop = False
    offset = 0
    _emit({"event": "ready"})
    for index, size in enumerate(req["input_sizes"]):
        where, offset = (offset, size), offset + size
        if stop:
            _emit({"event": "test", "index": index, "status": STATUS_SKIPPED, "error": "earlier test failed", "seconds": 0.0})
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _emit({"event": "test", "index": index, "status": STATUS_TIMEOUT, "error": "program time limit", "seconds": 0.0})
            continue
        try:
            run, payload = _run_one_test(
                header, compiled, (inputs_fd, *where), req["fn_name"], limits, min(float(limits["timeout"]), remaining),
                namespace, budget, req["uid"] if namespace else None, memfds,
            )
        except (OSError, MemoryError) as exc:  # the harness could not run this test: the test fails
            run, payload = {"status": STATUS_RUNTIME_ERROR, "error": f"harness: {type(exc).__name__}: {exc}"[:500],
                            "seconds": 0.0}, b""
        run["index"] = index
        run["event"] = "test"
        _emit(run, payload)
        if req["stop_on_error"] and run["status"] != STATUS_OK:
            stop = True


def _copy_range(src: int, dst: int, offset: int, size: int) -> None:
    """``size`` bytes of ``src`` from ``offset`` onto the end of ``dst``, copied by the kernel
    (the bytes never pass through this process's memory, which every test process inherits)."""
    while size > 0:
        try:
            done = os.copy_file_range(src, dst, size, offset)
        except OSError:  # e.g. a kernel without copy_file_range between these files
            done = os.sendfile(dst, src, offset, size)
        if done <= 0:
            raise OSError(f"short copy of a test input ({size} bytes left)")
        offset += done
        size -= done


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _read_at_most(fd: int, limit: int, start: int = 0) -> bytes:
    """At most ``limit`` bytes of ``fd`` from offset ``start`` (never the whole file)."""
    os.lseek(fd, start, os.SEEK_SET)
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _stderr_tail(fd: int) -> str:
    size = os.fstat(fd).st_size
    return _read_at_most(fd, _STDERR_TAIL, max(0, size - _STDERR_TAIL)).decode("utf-8", "replace")


def _run_one_test(header, compiled, test_input, fn_name, limits, wall: float, namespace: bool,
                  budget: list[int], uid: int | None, memfds: dict[str, int]) -> tuple[dict, bytes]:
    """Run one test in a forked child; returns its event and its output (within ``budget``,
    the program's output bytes left, which it decreases). ``test_input`` is ``(fd, offset,
    size)``: the stdin bytes, or the JSON of the call's arguments."""
    call_based = fn_name is not None
    for fd in memfds.values():  # empty and rewound: nothing of the last test is left in them
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
    in_fd, out_fd, err_fd, res_fd = memfds["stdin"], memfds["stdout"], memfds["stderr"], memfds["result"]
    args_fd = memfds["args"] if call_based else -1
    source_fd, offset, size = test_input
    _copy_range(source_fd, args_fd if call_based else in_fd, offset, size)
    os.lseek(in_fd, 0, os.SEEK_SET)
    cpu = int(math.ceil(limits["cpu_time"] if limits["cpu_time"] is not None else limits["timeout"]))
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _test_child(header, compiled, args_fd, fn_name, in_fd, out_fd, err_fd, res_fd, cpu, int(limits["file_mb"]) * _MB,
                    namespace, uid)
    timed_out = not _wait_exit(pid, wall)
    if timed_out:
        if namespace:
            _kill_as(uid, pid)
        else:
            _kill(pid, signal.SIGKILL, group=True)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.monotonic() - start
    # Kill whatever the program left behind (daemons, fork-bomb survivors) and reap them.
    if namespace and os.getpid() == 1:
        _kill_as(uid, -1)  # -1: every process of the namespace but its init, the harness
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
    elif not namespace:
        _kill(pid, signal.SIGKILL, group=True)
    cpu_used = usage.ru_utime + usage.ru_stime
    try:
        if timed_out:
            return {"status": STATUS_TIMEOUT, "error": f"wall time limit ({wall:.1f} s)", "seconds": seconds}, b""
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= cpu):
                return {"status": STATUS_TIMEOUT, "error": f"CPU time limit ({cpu} s)", "seconds": seconds}, b""
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            hint = " (memory limit?)" if sig == signal.SIGKILL else ""
            return {"status": STATUS_RUNTIME_ERROR, "error": f"killed by {name}{hint}", "seconds": seconds}, b""
        code = os.WEXITSTATUS(status)
        if code != 0:
            lines = _stderr_tail(err_fd).strip().splitlines()
            reason = lines[-1] if lines else f"exit status {code}"
            return {"status": STATUS_RUNTIME_ERROR, "error": reason[:500], "seconds": seconds}, b""
        fd = res_fd if call_based else out_fd
        size = os.fstat(fd).st_size
        output = _read_at_most(fd, min(size, budget[0]))
        budget[0] -= len(output)
        if size > len(output):
            error = f"output limit: more than {float(limits['output_mb']):g} MiB of output over the program's tests"
            return {"status": STATUS_RUNTIME_ERROR, "error": error, "seconds": seconds, "truncated": True}, b""
        return {"status": STATUS_OK, "seconds": seconds}, output
    finally:
        for fd in memfds.values():  # the output's pages go back now, not at the next test
            os.ftruncate(fd, 0)


def _kill_as(uid: int, pid: int) -> None:
    """SIGKILL ``pid`` (-1: every process this one may signal) with the program's uid as the
    effective uid: the harness's own uid may not signal the program's processes (that is the
    point of it). The harness takes its own uid back before returning."""
    own = os.geteuid()
    os.setresuid(-1, uid, -1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.setresuid(-1, own, -1)


def _kill(pid: int, sig: int, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` exits or ``timeout`` seconds pass; True if it exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        try:
            end = time.monotonic() + timeout
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                try:
                    ready, _, _ = select.select([pidfd], [], [], left)
                except InterruptedError:
                    continue
                return bool(ready)
        finally:
            os.close(pidfd)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            done, _ = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) or (None, None)
        except ChildProcessError:
            return True
        if done is not None:
            return True
        time.sleep(0.005)
    return False


def _test_child(header, compiled, args_fd, fn_name, in_fd, out_fd, err_fd, res_fd, cpu, fsize, namespace,
                uid) -> None:
    """Run the program once in this forked process and ``_exit``: 0 = finished, 1 = raised."""
    import builtins
    import traceback

    code = 1
    try:
        if not namespace:
            os.setpgid(0, 0)  # so the harness can kill everything this test starts
            libc = _libc()
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with the harness
        args = None
        if args_fd >= 0:
            os.lseek(args_fd, 0, os.SEEK_SET)
            args = json.loads(_read_at_most(args_fd, os.fstat(args_fd).st_size))
            os.close(args_fd)
        if uid is not None:  # the program's uid: the harness keeps it as its saved uid only
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        os.dup2(in_fd, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        for fd in (in_fd, out_fd, err_fd):
            os.close(fd)
        os.closerange(3, res_fd)  # the test inputs' memfd among them: this test sees its own only
        os.closerange(res_fd + 1, 1 << 16)
        sys.stdin = open(0, "r", encoding="utf-8", errors="replace", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False)
        namespace_globals = {"__name__": "__main__", "__builtins__": builtins}
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            # Never above the harness's own hard limits (an unprivileged process cannot raise them).
            _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
            if cpu_hard != resource.RLIM_INFINITY:
                cpu = min(cpu, max(1, cpu_hard - 1))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            _set_rlimit(resource.RLIMIT_FSIZE, fsize)
            if not hasattr(builtins, "exit"):  # -S skips site, which defines exit/quit
                builtins.exit = builtins.quit = sys.exit
            exec(header, namespace_globals)
            exec(compiled, namespace_globals)
            if fn_name is not None:
                fn = namespace_globals.get(fn_name)
                if fn is None and "Solution" in namespace_globals:
                    fn = getattr(namespace_globals["Solution"](), fn_name, None)
                if fn is None:
                    raise NameError(f"function {fn_name!r} is not defined (neither top-level nor in class Solution)")
                result = fn(*(args if isinstance(args, list) else [args]))
                _write_all(res_fd, json.dumps(result, default=repr).encode())
            code = 0
        except SystemExit as exc:
            code = 0 if exc.code in (None, 0) else 1
            if code:
                print(f"SystemExit: {exc.code}", file=sys.stderr)
        except BaseException:  # noqa: BLE001 - any failure of the program is a runtime error
            traceback.print_exc()
        try:
            sys.stdout.flush()
        except BaseException as exc:  # noqa: BLE001 - e.g. EFBIG: output over the file limit
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
            code = 1
        try:
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)
