"""Run untrusted Python programs against test inputs, contained: the engine behind ``reward=code``.

One program = one jail. The training process never imports or executes the program; it
starts a fresh interpreter on this very file (``python -I -S sandbox.py``) and sends it a
JSON request on stdin::

    training process ──Popen──► launcher (root, host namespaces)
                                  joins the slot's cgroups (pids.max, memory limit),
                                  unshare(mount | pid | net | ipc | uts), fork
                                    └─► harness = pid 1 of the new pid namespace
                                          private mounts; chroot into a read-only tmpfs root that
                                          holds read-only binds of the Python install,
                                          site-packages, /usr and /lib only, and a private
                                          size-limited tmpfs ``/sandbox`` as cwd;
                                          drops to an unprivileged per-slot uid; rlimits;
                                          compiles the program once, then for each test:
                                            fork ─► test child: stdin/stdout/stderr on memfds,
                                                    CPU-time and file-size rlimits, runs the code
                                          kills the child at the wall-clock limit, kills every
                                          other process left in the namespace, and streams
                                          one JSON line per test (raw output only) back.

What each mechanism buys (``Sandbox.mechanisms`` lists the ones active):

- pid namespace: the program cannot see or signal any host process (``os.getppid()`` is the
  harness, which as namespace init ignores SIGKILL from inside), and when the harness exits
  the kernel kills everything left in the namespace: no orphan survives a run.
- network namespace: no interface is up, not even loopback; every connect fails.
- mount namespace + chroot: files outside the jail do not exist for the program (no /proc,
  /etc, /home, /root, /work, /tmp of the host); the root is read-only and ``/sandbox`` is a
  private tmpfs that disappears with the namespace.
- unprivileged uid (``uid_base + slot``, one per concurrent jail): no capabilities, so the
  chroot cannot be left and RLIMIT_NPROC applies (it is ignored for root), counted per jail.
- rlimits: address space (RLIMIT_AS), CPU seconds per test, file size (bounds stdout too:
  outputs go to memfds), process count, no core dumps.
- cgroups (v1 or v2, when writable): ``pids.max`` per jail bounds a fork bomb even across
  uids, and a memory limit bounds the sum over all processes (rlimits bound each one).
- comparison happens in the training process (``code.py``): the jail receives test inputs
  only, never expected outputs, so a program can neither read nor forge its verdict.

Without root (or where namespaces are refused) ``isolation="process"`` is the fallback: a
plain subprocess with the rlimits, a scrubbed environment, a fresh temporary directory,
cgroups where writable, and a guard that disables ``socket``, ``fork``, ``kill`` and
``subprocess`` inside the program. That guard stops accidents, not adversaries (a program
can undo it); prefer ``namespace`` whenever it is available.

This file must import only the standard library: the launcher runs it as a script.
"""
from __future__ import annotations

import ctypes
import itertools
import json
import math
import os
import resource
import select
import signal
import stat
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

STATUS_OK = "ok"  # ran to completion; ``output`` holds what it produced
STATUS_RUNTIME_ERROR = "runtime_error"  # exception, non-zero exit, killed by a signal or a limit
STATUS_TIMEOUT = "timeout"  # CPU or wall-clock limit of the test (or of the program) reached
STATUS_SKIPPED = "skipped"  # not run: an earlier test failed and ``stop_on_error`` was set

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

_MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Resource limits of one program run.

    Attributes:
        timeout: wall-clock seconds per test case.
        cpu_time: CPU seconds per test case (RLIMIT_CPU, rounded up to whole seconds);
            ``None`` means ``timeout``.
        program_timeout: wall-clock seconds for the whole program (all its tests); tests not
            reached by then are timeouts.
        memory_mb: address space of each process in MiB (RLIMIT_AS).
        file_mb: largest file the program may write, stdout and stderr included
            (RLIMIT_FSIZE), in MiB.
        disk_mb: size of the jail's private ``/sandbox`` tmpfs, in MiB (namespace isolation).
        max_processes: processes and threads of one jail, the harness included
            (RLIMIT_NPROC and cgroup ``pids.max``).
        group_memory_mb: memory of all the jail's processes together (cgroup);
            ``None`` means ``2 * memory_mb + disk_mb``.
    """

    timeout: float = 4.0
    cpu_time: float | None = None
    program_timeout: float = 30.0
    memory_mb: int = 1024
    file_mb: int = 16
    disk_mb: int = 64
    max_processes: int = 16
    group_memory_mb: int | None = None

    def __post_init__(self):
        for key in ("timeout", "program_timeout", "memory_mb", "file_mb", "disk_mb"):
            if getattr(self, key) <= 0:
                raise ValueError(f"Limits.{key} must be positive, got {getattr(self, key)}")
        if self.cpu_time is not None and self.cpu_time <= 0:
            raise ValueError(f"Limits.cpu_time must be positive, got {self.cpu_time}")
        if self.max_processes < 2:
            raise ValueError(
                f"Limits.max_processes must be >= 2 (harness + test process), got {self.max_processes}"
            )


@dataclass
class TestRun:
    """What one test case did inside the jail (raw; the caller judges correctness).

    Attributes:
        status: one of ``ok``, ``runtime_error``, ``timeout``, ``skipped``.
        output: stdout (stdin/stdout programs) or the JSON text of the return value
            (call-based programs); ``None`` unless ``status == "ok"``.
        error: a one-line reason for a non-ok status.
        seconds: wall-clock time of the test.
    """

    status: str
    output: str | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class ProgramRun:
    """The result of one program: a compile error, or one ``TestRun`` per input."""

    compile_error: str | None
    tests: list[TestRun] = field(default_factory=list)


@dataclass
class Job:
    """One program to run.

    Attributes:
        code: Python source.
        inputs: one entry per test: the stdin text (stdin/stdout programs) or the argument
            list of the call (call-based programs; a non-list is passed as the one argument).
        fn_name: the function to call (a module-level function or a method of
            ``class Solution``); ``None`` for stdin/stdout programs.
        stop_on_error: skip the remaining tests after the first runtime error or timeout.
    """

    code: str
    inputs: list
    fn_name: str | None = None
    stop_on_error: bool = False


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): e.g. the jail could not be built."""


# ------------------------------------------------------------------------------------------
# Trusted side: runs in the training process.
# ------------------------------------------------------------------------------------------

_PROBE_CACHE: dict[tuple, str | None] = {}
_INSTANCES = itertools.count()
_UIDS_PER_SANDBOX = 1024  # slots of one Sandbox: uid_base + block * 1024 + slot
_UID_BLOCKS = 250_000  # 1_880_000_000 + 250_000 * 1024 stays below 2**31


class Sandbox:
    """Runs programs in jails, ``num_workers`` at a time.

    Args:
        limits: resource limits applied to every program.
        isolation: ``namespace`` (root only: namespaces, chroot jail, unprivileged uid),
            ``process`` (rlimits and a guard only), or ``auto`` (namespace when a probe
            run succeeds, else process with a warning).
        num_workers: programs run concurrently (default: CPU count; more helps a little,
            since part of each run is waiting on the kernel, not computing).
        uid_base: start of the uid range of the jails. Each Sandbox takes its own block of
            1024 uids in it (derived from the process id and an instance counter, so
            concurrent rewards and ranks do not share RLIMIT_NPROC accounting), and its
            jail ``i`` runs as uid/gid ``block start + i``. The default range,
            1_880_000_000 to 2**31, is above the ranges Linux distributions and systemd
            hand out.
        allow_site_packages: make the training interpreter's site-packages (e.g. numpy)
            importable, read-only, inside the jail.
        use_cgroups: put each jail in its own pids/memory cgroup where the hierarchy is
            writable.
    """

    def __init__(
        self,
        limits: Limits = Limits(),
        *,
        isolation: str = "auto",
        num_workers: int | None = None,
        uid_base: int = 1_880_000_000,
        allow_site_packages: bool = True,
        use_cgroups: bool = True,
    ):
        if isolation not in ("auto", "namespace", "process"):
            raise ValueError(f"isolation must be auto|namespace|process, got {isolation!r}")
        self.limits = limits
        self.num_workers = num_workers or os.cpu_count() or 1
        if not 1 <= self.num_workers <= _UIDS_PER_SANDBOX:
            raise ValueError(f"num_workers must be in [1, {_UIDS_PER_SANDBOX}], got {self.num_workers}")
        block = (os.getpid() * 7919 + next(_INSTANCES)) % _UID_BLOCKS
        self.uid_base = uid_base + block * _UIDS_PER_SANDBOX
        self._sys_path = _site_packages() if allow_site_packages else []
        self._ro_paths = _jail_ro_paths(self._sys_path)
        self._jail_root = os.path.join("/tmp", "rltrain-jail-root")
        self._pool = None
        self._slots = None
        self._zygote_lock = threading.Lock()
        self._zygote = None
        self._cgroups: dict[int, list[tuple[str, str]]] = {}
        self._cgroup_note = "off"
        if isolation == "auto":
            reason = self._probe_namespace()
            if reason is None:
                isolation = "namespace"
            else:
                import warnings

                warnings.warn(
                    f"sandbox: namespace isolation unavailable ({reason}); falling back to "
                    "isolation='process' (rlimits and a guard only)",
                    stacklevel=2,
                )
                isolation = "process"
        elif isolation == "namespace":
            reason = self._probe_namespace()
            if reason is not None:
                raise SandboxError(f"isolation='namespace' is unavailable here: {reason}")
        self.isolation = isolation
        if use_cgroups:
            self._setup_cgroups()

    # -- public API ----------------------------------------------------------------------

    @property
    def mechanisms(self) -> list[str]:
        """The containment mechanisms in force, in words (for logs and reports)."""
        out = []
        if self.isolation == "namespace":
            out += [
                "pid+net+mount+ipc+uts namespaces",
                "chroot into read-only jail with private tmpfs /sandbox",
                f"unprivileged uid {self.uid_base}+slot",
                "RLIMIT_NPROC",
            ]
        else:
            out += ["fresh temp dir", "guard preamble (socket/fork/kill/subprocess disabled)"]
        out += ["RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "scrubbed environment"]
        out.append(f"cgroups: {self._cgroup_note}")
        return out

    def run(self, code: str, inputs: list, fn_name: str | None = None, *, stop_on_error: bool = False) -> ProgramRun:
        """Run one program on ``inputs`` (see ``Job``)."""
        return self.run_many([Job(code, list(inputs), fn_name, stop_on_error)])[0]

    def run_many(self, jobs: list[Job]) -> list[ProgramRun]:
        """Run ``jobs`` on the bounded worker pool; results in the order of ``jobs``."""
        if not jobs:
            return []
        if self._pool is None:
            import queue
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="sandbox")
            self._slots = queue.Queue()
            for slot in range(self.num_workers):
                self._slots.put(slot)
        return list(self._pool.map(self._run_in_slot, jobs))

    def close(self) -> None:
        """Stop the worker pool and remove the per-slot cgroups."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._stop_zygote()
        for dirs in self._cgroups.values():
            for _, path in dirs:
                try:
                    os.rmdir(path)
                except OSError:
                    pass
        self._cgroups = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing sensible left to do
            pass

    # -- internals -----------------------------------------------------------------------

    def _run_in_slot(self, job: Job) -> ProgramRun:
        slot = self._slots.get()
        try:
            return self._run_one(job, slot, self.isolation, self.limits)
        finally:
            self._slots.put(slot)

    def _run_one(self, job: Job, slot: int, isolation: str, limits: Limits) -> ProgramRun:
        import shutil
        import socket
        import tempfile

        workdir = tempfile.mkdtemp(prefix="rltrain-sandbox-") if isolation == "process" else None
        request = {
            "isolation": isolation,
            "code": job.code,
            "inputs": job.inputs,
            "fn_name": job.fn_name,
            "stop_on_error": job.stop_on_error,
            "limits": asdict(limits),
            "uid": self.uid_base + slot,
            "jail_root": self._jail_root,
            "ro_paths": self._ro_paths,
            "sys_path": self._sys_path,
            "cgroup_procs": [os.path.join(path, "cgroup.procs") for _, path in self._cgroups.get(slot, [])],
            "workdir": workdir,
        }
        ours, theirs = socket.socketpair()
        pidfd = None
        killed = False
        chunks = []
        try:
            pidfd = self._zygote_fork(theirs)
            theirs.close()
            ours.sendall(json.dumps(request).encode())
            ours.shutdown(socket.SHUT_WR)
            # Backstop only: the harness enforces program_timeout itself.
            deadline = time.monotonic() + limits.program_timeout + 10.0
            while True:
                left = deadline - time.monotonic()
                if left <= 0 and not killed:
                    killed = True
                    if pidfd is not None:
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    deadline = time.monotonic() + 10.0  # the namespace dies with the launcher
                    continue
                if left <= 0:
                    raise SandboxError("sandbox launcher did not exit after SIGKILL")
                ours.settimeout(left)
                try:
                    chunk = ours.recv(1 << 20)
                except socket.timeout:
                    continue
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            ours.close()
            theirs.close()
            if pidfd is not None:
                os.close(pidfd)
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        return _parse_run(b"".join(chunks), len(job.inputs), killed)

    def _zygote_fork(self, job_socket) -> int | None:
        """Have the zygote fork a launcher talking on ``job_socket``; returns its pidfd."""
        import socket
        import subprocess

        with self._zygote_lock:
            for attempt in range(2):
                if self._zygote is None or self._zygote[0].poll() is not None:
                    parent, child = socket.socketpair()
                    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
                    proc = subprocess.Popen(
                        [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), "--zygote", str(child.fileno())],
                        pass_fds=[child.fileno()], env=env, cwd="/", start_new_session=True,
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )
                    child.close()
                    self._zygote = (proc, parent)
                proc, ctrl = self._zygote
                try:
                    socket.send_fds(ctrl, [b"run"], [job_socket.fileno()])
                    msg, fds, _, _ = socket.recv_fds(ctrl, 16, 1)
                except OSError:
                    msg, fds = b"", []
                if msg == b"ok":
                    return fds[0] if fds else None  # no pidfd: the launcher already exited
                if msg:
                    raise SandboxError(f"the sandbox zygote refused the request: {msg!r}")
                # It died (its PDEATHSIG follows the thread that started it): start a fresh one.
                self._stop_zygote()
            raise SandboxError("the sandbox zygote process failed to start a launcher")

    def _stop_zygote(self) -> None:
        zygote = self._zygote
        if zygote is not None:
            proc, ctrl = zygote
            ctrl.close()  # EOF makes the zygote exit
            try:
                proc.wait(timeout=5)
            except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: force it
                proc.kill()
                proc.wait()
            self._zygote = None

    def _probe_namespace(self) -> str | None:
        """None if a namespace jail works here, else the reason it does not."""
        key = tuple(self._ro_paths)
        if key not in _PROBE_CACHE:
            if os.geteuid() != 0:
                _PROBE_CACHE[key] = "not running as root"
            else:
                try:
                    os.makedirs(self._jail_root, mode=0o700, exist_ok=True)
                    st = os.lstat(self._jail_root)
                    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
                        raise SandboxError(f"{self._jail_root} must be a directory owned by root")
                    probe = self._run_one(
                        Job("print(6 * 7)", [""]), 0, "namespace", Limits(timeout=10.0, program_timeout=20.0)
                    )
                    ok = probe.compile_error is None and probe.tests[0].output == "42\n"
                    _PROBE_CACHE[key] = None if ok else f"probe run failed: {probe}"
                except SandboxError as exc:
                    _PROBE_CACHE[key] = str(exc)
        return _PROBE_CACHE[key]

    def _setup_cgroups(self) -> None:
        """Create one pids (+ memory) cgroup per worker slot where the hierarchy is writable."""
        limits = self.limits
        group_mem = limits.group_memory_mb or (2 * limits.memory_mb + limits.disk_mb)
        made: list[str] = []
        notes = []
        for controller, files in (
            ("pids", {"v1": [("pids.max", str(limits.max_processes + 1))], "v2": [("pids.max", str(limits.max_processes + 1))]}),  # +1: the launcher
            (
                "memory",
                {
                    "v1": [("memory.limit_in_bytes", str(group_mem * _MB))],
                    "v2": [("memory.max", str(group_mem * _MB)), ("memory.swap.max", "0")],
                },
            ),
        ):
            base, version = _own_cgroup_dir(controller)
            if base is None:
                notes.append(f"{controller} unavailable")
                continue
            _remove_stale_cgroups(base)
            try:
                for slot in range(self.num_workers):
                    path = os.path.join(base, f"rltrain-sandbox-{os.getpid()}-{id(self):x}-{slot}")
                    os.makedirs(path, exist_ok=True)
                    self._cgroups.setdefault(slot, []).append((controller, path))
                    for name, value in files[version]:
                        if os.path.exists(os.path.join(path, name)):
                            with open(os.path.join(path, name), "w") as fh:
                                fh.write(value)
                made.append(f"{controller} ({version})")
            except OSError as exc:
                notes.append(f"{controller} not writable ({exc.strerror})")
                for slot in list(self._cgroups):
                    self._cgroups[slot] = [(c, p) for c, p in self._cgroups[slot] if c != controller]
        self._cgroup_note = ", ".join(made + notes) or "off"


def _remove_stale_cgroups(base: str) -> None:
    """Remove empty slot cgroups left by training processes that died without ``close()``."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if name.startswith("rltrain-sandbox-") and len(parts) == 5 and parts[2].isdigit():
            try:
                os.kill(int(parts[2]), 0)
            except ProcessLookupError:
                try:
                    os.rmdir(os.path.join(base, name))
                except OSError:
                    pass
            except PermissionError:
                pass


def _site_packages() -> list[str]:
    import site

    paths = [p for p in site.getsitepackages() if os.path.isdir(p)]
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if user and os.path.isdir(user):
        paths.append(user)
    return paths


def _jail_ro_paths(sys_path: list[str]) -> list[str]:
    """Host paths visible (read-only) in the jail: the interpreter, site-packages, system libs."""
    paths = ["/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin", sys.base_prefix, sys.prefix]
    paths += sys_path
    real = sys.prefix  # a venv dir is only needed for its site-packages
    if real != sys.base_prefix and real in paths:
        paths.remove(real)
    seen, out = set(), []
    for p in paths:
        if os.path.lexists(p) and p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _own_cgroup_dir(controller: str) -> tuple[str | None, str | None]:
    """The directory of this process's cgroup for ``controller`` and the hierarchy version."""
    try:
        with open("/proc/self/cgroup") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None, None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            base = f"/sys/fs/cgroup/{controller}{path}"
            if os.path.isdir(base):
                return base, "v1"
    for line in lines:
        if line.startswith("0::"):
            base = "/sys/fs/cgroup" + line[3:]
            try:
                with open(os.path.join(base, "cgroup.controllers")) as fh:
                    if controller in fh.read().split():
                        return base, "v2"
            except OSError:
                pass
    return None, None


def _parse_run(out: bytes, n_tests: int, killed: bool) -> ProgramRun:
    compile_error = None
    other: list[str] = []  # anything not a JSON event is the launcher's/harness's stderr
    tests: dict[int, TestRun] = {}
    done = False
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            other.append(line)  # stderr text, or a partial last line of a killed harness
            continue
        if not isinstance(event, dict):
            other.append(line)
            continue
        kind = event.get("event")
        if kind == "setup_error":
            raise SandboxError(f"sandbox setup failed: {event.get('error')}")
        if kind == "compile_error":
            compile_error = event["error"]
        elif kind == "test":
            tests[event["index"]] = TestRun(event["status"], event.get("output"), event.get("error"), event["seconds"])
        elif kind == "done":
            done = True
    if compile_error is not None:
        return ProgramRun(compile_error, [])
    if not done and not killed and not tests and other:
        # The launcher or harness failed before running any test and said why: a sandbox failure.
        raise SandboxError("sandbox harness failed: " + " | ".join(other[-3:]))
    if killed:
        missing = TestRun(STATUS_TIMEOUT, error="program time limit")
    else:
        missing = TestRun(STATUS_RUNTIME_ERROR, error="harness died before reporting this test")
    return ProgramRun(None, [tests.get(i, missing) for i in range(n_tests)])


# ------------------------------------------------------------------------------------------
# Jail side: runs in the launcher / harness / test processes (``python -I -S sandbox.py``).
# ------------------------------------------------------------------------------------------

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV = 1, 2, 4
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_NO_NEW_PRIVS = 1, 4, 38


def _emit(event: dict) -> None:
    data = (json.dumps(event) + "\n").encode()
    while data:
        data = data[os.write(1, data):]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    return libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(libc, source, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _build_jail(libc, req: dict) -> None:
    """Private mounts and chroot (runs as root, pid 1 of the new namespaces)."""
    root, uid = req["jail_root"], req["uid"]
    limits = req["limits"]
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)
    _mount(libc, "tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    for path in req["ro_paths"]:
        target = root + path
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if os.path.islink(path):
            os.symlink(os.readlink(path), target)
            continue
        os.makedirs(target, mode=0o755, exist_ok=True)
        _mount(libc, path, target, None, _MS_BIND | _MS_REC)
        _mount(libc, None, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    os.makedirs(root + "/dev", mode=0o755)
    for dev in ("null", "zero", "random", "urandom"):
        with open(f"{root}/dev/{dev}", "w"):
            pass
        _mount(libc, f"/dev/{dev}", f"{root}/dev/{dev}", None, _MS_BIND)
    os.mkdir(root + "/sandbox", 0o700)
    _mount(
        libc, "tmpfs", root + "/sandbox", "tmpfs", _MS_NOSUID | _MS_NODEV,
        f"size={int(limits['disk_mb'])}m,nr_inodes=16384,mode=0700,uid={uid},gid={uid}",
    )
    os.symlink("/sandbox", root + "/tmp")
    _mount(libc, None, root, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    os.chroot(root)
    os.chdir("/sandbox")


def _drop_privileges(libc, uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    # Credentials changed, which clears the parent-death signal: set it now.
    _check(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _check(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(DUMPABLE)")
    if os.getuid() == 0 or os.geteuid() == 0:
        raise OSError("privileges were not dropped")


def _set_rlimit(which: int, value: int) -> None:
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


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


def _zygote_main(ctrl_fd: int) -> None:
    """Fork one launcher per request; imports are paid once here, not per program.

    Protocol on the control socket (from the training process): a message ``run`` carrying
    one file descriptor, the job socket; the reply ``ok`` carries a pidfd of the launcher
    (race-free kill). EOF on the control socket, or the training process dying, ends it.
    """
    import socket
    import traceback

    libc = _libc()
    _check(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    exec(compile(HEADER, "<header>", "exec"), {})
    import shutil  # noqa: F401 - preloaded for the process-isolation guard
    import subprocess  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # launchers are reaped by the kernel
    ctrl = socket.socket(fileno=ctrl_fd)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(ctrl, 16, 1)
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)
        if msg != b"run" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            ctrl.sendall(b"bad request")
            continue
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.setsid()
                for target in (0, 1, 2):
                    os.dup2(fds[0], target)
                os.closerange(3, 1 << 16)  # the control socket included
                _jail_main()
            except BaseException:  # noqa: BLE001 - report anything, then die
                traceback.print_exc()
            os._exit(3)
        os.close(fds[0])
        try:
            pidfd = [os.pidfd_open(pid)]
        except OSError:  # already exited (and reaped)
            pidfd = []
        socket.send_fds(ctrl, [b"ok"], pidfd)
        for fd in pidfd:
            os.close(fd)


def _read_request() -> dict:
    chunks = []
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            return json.loads(b"".join(chunks))
        chunks.append(chunk)


def _jail_main() -> None:
    req = _read_request()
    limits = req["limits"]
    namespace = req["isolation"] == "namespace"
    libc = _libc()
    if namespace:
        try:
            for procs in req["cgroup_procs"]:
                with open(procs, "w") as fh:
                    fh.write(str(os.getpid()))
            _check(
                libc.unshare(_CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS),
                "unshare",
            )
            pid = os.fork()
        except OSError as exc:
            _emit({"event": "setup_error", "error": str(exc)})
            os._exit(3)
        if pid:
            # Launcher: mirror the harness's fate; if the launcher is killed, PDEATHSIG
            # kills the harness and with it the whole pid namespace.
            _, status = os.waitpid(pid, 0)
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        try:
            _build_jail(libc, req)
            _drop_privileges(libc, req["uid"])
            _set_rlimit(resource.RLIMIT_NPROC, int(limits["max_processes"]))
        except OSError as exc:
            _emit({"event": "setup_error", "error": str(exc)})
            os._exit(3)
    else:
        for procs in req["cgroup_procs"]:
            try:
                with open(procs, "w") as fh:
                    fh.write(str(os.getpid()))
            except OSError:
                pass
        os.chdir(req["workdir"])
        os.environ["HOME"] = os.environ["TMPDIR"] = req["workdir"]
    if namespace:
        os.environ["HOME"] = os.environ["TMPDIR"] = "/sandbox"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_rlimit(resource.RLIMIT_CORE, 0)
    _set_rlimit(resource.RLIMIT_AS, int(limits["memory_mb"]) * _MB)
    _set_rlimit(resource.RLIMIT_CPU, int(math.ceil(limits["program_timeout"])) + 1)
    sys.path.extend(req["sys_path"])
    _run_tests(req, namespace)
    _emit({"event": "done"})
    os._exit(0)


def _run_tests(req: dict, namespace: bool) -> None:
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
    stop = False
    for index, test_input in enumerate(req["inputs"]):
        if stop:
            _emit({"event": "test", "index": index, "status": STATUS_SKIPPED, "error": "earlier test failed", "seconds": 0.0})
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _emit({"event": "test", "index": index, "status": STATUS_TIMEOUT, "error": "program time limit", "seconds": 0.0})
            continue
        run = _run_one_test(header, compiled, test_input, req["fn_name"], limits, min(float(limits["timeout"]), remaining), namespace)
        run["index"] = index
        run["event"] = "test"
        _emit(run)
        if req["stop_on_error"] and run["status"] != STATUS_OK:
            stop = True


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _run_one_test(header, compiled, test_input, fn_name, limits, wall: float, namespace: bool) -> dict:
    call_based = fn_name is not None
    in_fd = os.memfd_create("stdin")
    out_fd = os.memfd_create("stdout")
    err_fd = os.memfd_create("stderr")
    res_fd = os.memfd_create("result")
    if not call_based:
        _write_all(in_fd, (test_input if isinstance(test_input, str) else str(test_input)).encode())
    os.lseek(in_fd, 0, os.SEEK_SET)
    cpu = int(math.ceil(limits["cpu_time"] if limits["cpu_time"] is not None else limits["timeout"]))
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _test_child(header, compiled, test_input, fn_name, in_fd, out_fd, err_fd, res_fd, cpu, int(limits["file_mb"]) * _MB, namespace)
    timed_out = not _wait_exit(pid, wall)
    if timed_out:
        _kill(pid, signal.SIGKILL, group=not namespace)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.monotonic() - start
    # Kill whatever the program left behind (daemons, fork-bomb survivors) and reap them.
    if namespace and os.getpid() == 1:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
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
            return {"status": STATUS_TIMEOUT, "error": f"wall time limit ({wall:.1f} s)", "seconds": seconds}
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= cpu):
                return {"status": STATUS_TIMEOUT, "error": f"CPU time limit ({cpu} s)", "seconds": seconds}
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            hint = " (memory limit?)" if sig == signal.SIGKILL else ""
            return {"status": STATUS_RUNTIME_ERROR, "error": f"killed by {name}{hint}", "seconds": seconds}
        code = os.WEXITSTATUS(status)
        if code != 0:
            lines = _read_all(err_fd).decode("utf-8", "replace").strip().splitlines()
            reason = lines[-1] if lines else f"exit status {code}"
            return {"status": STATUS_RUNTIME_ERROR, "error": reason[:500], "seconds": seconds}
        output = _read_all(res_fd if call_based else out_fd).decode("utf-8", "replace")
        return {"status": STATUS_OK, "output": output, "seconds": seconds}
    finally:
        for fd in (in_fd, out_fd, err_fd, res_fd):
            os.close(fd)


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


def _test_child(header, compiled, test_input, fn_name, in_fd, out_fd, err_fd, res_fd, cpu, fsize, namespace) -> None:
    """Run the program once in this forked process and ``_exit``: 0 = finished, 1 = raised."""
    import builtins
    import traceback

    code = 1
    try:
        if not namespace:
            os.setpgid(0, 0)  # so the harness can kill everything this test starts
            libc = _libc()
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with the harness
        os.dup2(in_fd, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        for fd in (in_fd, out_fd, err_fd):
            os.close(fd)
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
                args = test_input if isinstance(test_input, list) else [test_input]
                result = fn(*args)
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


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--zygote":
        _zygote_main(int(sys.argv[2]))
    else:  # one-shot: a request on stdin, events on stdout (handy for debugging)
        _jail_main()
