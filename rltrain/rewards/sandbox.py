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
                                          site-packages, /usr and /lib only (the *mount plan*),
                                          and one private size-limited tmpfs behind both the
                                          program's cwd ``/sandbox`` and a sticky ``/tmp``;
                                          drops to an unprivileged per-slot uid; rlimits;
                                          a seccomp filter; compiles the program once, then for
                                          each test:
                                            fork ─► test child: stdin/stdout/stderr on memfds,
                                                    CPU-time and file-size rlimits, runs the code
                                          kills the child at the wall-clock limit, kills every
                                          other process left in the namespace, and streams
                                          one framed event per test (raw output bytes, capped
                                          across all tests of the program) back.

What each mechanism buys (``Sandbox.mechanisms`` lists the ones active):

- pid namespace: the program cannot see or signal any host process (``os.getppid()`` is the
  harness, which as namespace init ignores SIGKILL from inside), and when the harness exits
  the kernel kills everything left in the namespace: no orphan survives a run.
- network namespace: no interface is up, not even loopback; every connect fails, abstract
  unix sockets of the host are out of reach.
- mount namespace + chroot: files outside the jail do not exist for the program (no /proc,
  /etc, /home, /root, the project, the host's /tmp or /dev/shm); the root and every bind are
  read-only, and the one writable tmpfs disappears with the namespace.
- ipc namespace: SysV queues, semaphores and shared memory die with the program.
- unprivileged uid (``uid_base + slot``, one per concurrent jail): no capabilities, so the
  chroot cannot be left and RLIMIT_NPROC applies (it is ignored for root), counted per jail.
- seccomp filter (x86_64, aarch64): keyring calls (``add_key``, ``keyctl``, ``request_key``:
  keyrings are per uid, not per namespace, so they would carry data to the next program of
  the slot), ``ptrace``, ``process_vm_*``, mount and namespace calls, ``bpf``,
  ``perf_event_open``, ``userfaultfd``, ``io_uring`` and module loading fail with EPERM.
- rlimits: address space (RLIMIT_AS), CPU seconds per test, file size (bounds stdout too:
  outputs go to memfds), process count, open files, no core dumps.
- cgroups (v1 or v2, when writable): ``pids.max`` per jail bounds a fork bomb even across
  uids, and a memory limit bounds the sum over all processes (rlimits bound each one).
- output cap: at most ``Limits.output_mb`` of output per program, all its tests together, is
  read back (a test past it is a runtime error with ``truncated``); the training process reads
  at most that much from the launcher, so its memory per program is bounded by the cap.
- comparison happens in the training process (``code.py``): the jail receives test inputs
  only, never expected outputs, so a program can neither read nor forge its verdict.

The mount plan (``mount_plan``) exposes every needed host path at its own path *and* at its
resolved path, so any layout works: an interpreter, venv or project under /tmp, /home, /opt,
behind a symlinked prefix, or nested in one another. Paths under /tmp are bound inside the
jail's own /tmp; a path that would hide the jail's /tmp, /dev, work dir or /proc is refused.

Isolation fails closed: ``isolation="auto"`` means ``namespace``, and raises
``NamespaceUnavailable`` (with the reason) where the jail cannot be built, never a silent
fallback. ``isolation="process"`` has to be asked for: a plain subprocess with the rlimits, a
scrubbed environment, a fresh temporary directory, the seccomp filter, cgroups where writable,
and a guard that disables ``socket``, ``fork``, ``kill`` and ``subprocess`` inside the
program. That guard stops accidents, not adversaries: the program runs as the training
process's user on the host and can reach whatever that user can.

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
        output_mb: output read back per program, all its tests together (stdout, or the
            JSON of the return values), in MiB; a test whose output goes past it is a runtime
            error marked ``truncated``. It also bounds the training process's memory per
            program.
    """

    timeout: float = 4.0
    cpu_time: float | None = None
    program_timeout: float = 30.0
    memory_mb: int = 1024
    file_mb: int = 16
    disk_mb: int = 64
    max_processes: int = 16
    group_memory_mb: int | None = None
    output_mb: float = 16.0

    def __post_init__(self):
        for key in ("timeout", "program_timeout", "memory_mb", "file_mb", "disk_mb", "output_mb"):
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
        truncated: the output went past what was left of the program's ``output_mb``.
    """

    status: str
    output: str | None = None
    error: str | None = None
    seconds: float = 0.0
    truncated: bool = False


@dataclass
class ProgramRun:
    """The result of one program: a compile error, or one ``TestRun`` per input.

    ``output_bytes`` counts the output bytes read back over all tests (at most
    ``Limits.output_mb``); ``truncated`` says whether some test's output was cut.
    """

    compile_error: str | None
    tests: list[TestRun] = field(default_factory=list)
    output_bytes: int = 0

    @property
    def truncated(self) -> bool:
        return any(t.truncated for t in self.tests)


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


class NamespaceUnavailable(SandboxError):
    """Namespace isolation cannot run here; ``reason`` says why (one line)."""

    def __init__(self, reason: str):
        super().__init__(f"namespace isolation is unavailable here: {reason}")
        self.reason = reason


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
            ``process`` (rlimits and a guard only: programs are not contained), or ``auto``
            (the same as ``namespace``: a probe builds one jail and runs a program in it, and
            ``NamespaceUnavailable`` is raised when that fails; never a fallback).
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
        import_paths: directories to make importable (read-only) instead of the
            interpreter's site-packages; ``None`` = decided by ``allow_site_packages``.
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
        import_paths: list[str] | None = None,
    ):
        if isolation not in ("auto", "namespace", "process"):
            raise ValueError(f"isolation must be auto|namespace|process, got {isolation!r}")
        self.limits = limits
        self.num_workers = num_workers or os.cpu_count() or 1
        if not 1 <= self.num_workers <= _UIDS_PER_SANDBOX:
            raise ValueError(f"num_workers must be in [1, {_UIDS_PER_SANDBOX}], got {self.num_workers}")
        block = (os.getpid() * 7919 + next(_INSTANCES)) % _UID_BLOCKS
        self.uid_base = uid_base + block * _UIDS_PER_SANDBOX
        if import_paths is not None:
            self._sys_path = [os.path.abspath(p) for p in import_paths]
        else:
            self._sys_path = _site_packages() if allow_site_packages else []
        self._jail_root = os.path.join("/tmp", "rltrain-jail-root")
        self._plan: list[tuple[str, str]] = []
        self._workdir = "/sandbox"
        self._pool = None
        self._slots = None
        self._zygote_lock = threading.Lock()
        self._zygote = None
        self._cgroups: dict[int, list[tuple[str, str]]] = {}
        self._cgroup_note = "off"
        if isolation in ("auto", "namespace"):
            # Fail closed: a jail or nothing. The caller decides whether to run uncontained.
            reason = self._probe_namespace()
            if reason is not None:
                raise NamespaceUnavailable(reason)
            isolation = "namespace"
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
                f"chroot into read-only jail ({len(self._plan)} read-only binds) with private tmpfs "
                f"{self._workdir} and /tmp",
                f"unprivileged uid {self.uid_base}+slot",
                "RLIMIT_NPROC",
            ]
        else:
            out += ["NOT CONTAINED: runs as this user on the host", "fresh temp dir",
                    "guard preamble (socket/fork/kill/subprocess disabled)"]
        out += ["seccomp (keyrings, ptrace, mount/namespace calls denied)" if _seccomp_arch() else "no seccomp (unknown arch)",
                "RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE",
                f"output cap {self.limits.output_mb:g} MiB per program", "scrubbed environment"]
        out.append(f"cgroups: {self._cgroup_note}")
        return out

    def run(self, code: str, inputs: list, fn_name: str | None = None, *, stop_on_error: bool = False) -> ProgramRun:
        """Run one program on ``inputs`` (see ``Job``)."""
        return self.run_many([Job(code, list(inputs), fn_name, stop_on_error)])[0]

    def run_many(self, jobs: list[Job]) -> list[ProgramRun]:
        """Run ``jobs`` on the bounded worker pool; results in the order of ``jobs``."""
        if self._pool is None:
            import queue
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="sandbox")
            self._slots = queue.Queue()
            for slot in range(self.num_workers):
                self._slots.put(slot)
        return list(self._pool.map(self._run_in_slot, jobs)) if jobs else []

    def run_many_safely(self, jobs: list[Job]) -> list[ProgramRun | SandboxError]:
        """``run_many``, except that a job whose sandbox failed gets its ``SandboxError`` in its
        place (the other jobs still run); the isolation never changes."""
        def one(job: Job):
            try:
                return self._run_in_slot(job)
            except SandboxError as exc:
                return exc

        if not jobs:
            return []
        self.run_many([])  # nothing to run: just starts the pool
        return list(self._pool.map(one, jobs))

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
            "plan": self._plan,
            "jail_workdir": self._workdir,
            "sys_path": self._sys_path,
            "cgroup_procs": [os.path.join(path, "cgroup.procs") for _, path in self._cgroups.get(slot, [])],
            "workdir": workdir,
        }
        ours, theirs = socket.socketpair()
        pidfd = None
        killed = False
        flooded = False
        chunks = []
        received = 0
        # The harness caps the output it sends; this cap (output + per-test headers and error
        # lines) bounds what a misbehaving harness could make the training process hold.
        max_bytes = int(limits.output_mb * _MB) + (64 << 10) + 8192 * len(job.inputs)
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
                received += len(chunk)
                if received > max_bytes:
                    flooded = True
                    if pidfd is not None:
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    break
                chunks.append(chunk)
        finally:
            ours.close()
            theirs.close()
            if pidfd is not None:
                os.close(pidfd)
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        if flooded:
            raise SandboxError(f"the sandbox harness sent more than {max_bytes} bytes (output cap broken)")
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
        """None if a namespace jail works here, else the reason it does not (one line).

        Builds the mount plan, then one real jail, and runs a program in it that checks the
        stdlib and every import path are there and the jail's /tmp and work dir are writable.
        """
        if os.geteuid() != 0:
            return f"not running as root (euid {os.geteuid()}); the jail needs root to build its namespaces and mounts"
        if _seccomp_arch() is None:
            return f"no seccomp filter for this CPU architecture ({os.uname().machine})"
        try:
            self._plan, self._workdir = mount_plan(_jail_ro_paths(self._sys_path))
        except SandboxError as exc:
            return str(exc)
        key = (tuple(map(tuple, self._plan)), self._workdir, tuple(self._sys_path))
        if key not in _PROBE_CACHE:
            try:
                os.makedirs(self._jail_root, mode=0o700, exist_ok=True)
                st = os.lstat(self._jail_root)
                if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
                    raise SandboxError(f"{self._jail_root} must be a directory owned by root")
                code = (
                    "import os, sys, json, unicodedata\n"
                    "missing = [p for p in sys.path if p and not os.path.exists(p)]\n"
                    "open('/tmp/probe', 'w').write('t'); open('probe', 'w').write('w')\n"
                    "print(6 * 7, json.dumps(missing))"
                )
                probe = self._run_one(Job(code, [""]), 0, "namespace", Limits(timeout=10.0, program_timeout=20.0))
                out = (probe.tests[0].output or "") if probe.tests else ""
                ok = probe.compile_error is None and out.startswith("42 ")
                if ok:  # an import path missing in the jail but present on the host: a plan bug
                    ok = not [p for p in json.loads(out[3:]) if os.path.exists(p)]
                test = probe.tests[0] if probe.tests else None
                what = probe.compile_error or (test and (test.error or test.output))
                _PROBE_CACHE[key] = None if ok else f"the probe program failed in the jail: {what!r}"[:500]
            except SandboxError as exc:
                _PROBE_CACHE[key] = " ".join(str(exc).split())[:500]
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
    """Host paths needed (read-only) in the jail: system libs, the interpreter, its stdlib,
    the import paths. ``mount_plan`` turns them into binds."""
    import sysconfig

    paths = ["/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin", "/etc/ld.so.cache", sys.base_prefix]
    for key in ("stdlib", "platstdlib"):
        stdlib = sysconfig.get_paths().get(key)
        if stdlib:
            paths += [stdlib, os.path.join(stdlib, "lib-dynload")]
    paths.append(os.path.dirname(os.__file__))
    paths += sys_path
    return [p for p in paths if os.path.lexists(p)]


_RESERVED = ("/tmp", "/dev", "/proc")  # the jail's own: its scratch /tmp, its devices, no /proc
_DEVICES = ("null", "zero", "random", "urandom")


def _is_within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def mount_plan(paths: list[str]) -> tuple[list[tuple[str, str]], str]:
    """The read-only binds that expose ``paths`` in the jail, and the jail's work dir.

    Each path is exposed at its own (absolute, normalised) path and at its resolved path, so
    imports work whichever spelling the interpreter uses, and absolute symlinks between the
    exposed trees still resolve. A path inside another exposed one is covered by it (no
    nested binds). Paths under /tmp or /dev are bound inside the jail's own /tmp or /dev; the
    work dir is ``/sandbox`` unless something must be exposed there.

    Returns:
        ``(binds, workdir)``: ``binds`` is a list of ``(host source, jail path)``, the source
        fully resolved, no jail path inside another.

    Raises:
        SandboxError: a path would cover the jail's root, /tmp, /dev, devices or work dir, or
            lies under /proc.
    """
    wanted: set[str] = set()
    for path in paths:
        if not os.path.lexists(path):
            continue
        lexical = os.path.normpath(os.path.abspath(path))
        real = os.path.realpath(path)
        if not os.path.exists(real):
            continue  # a dangling symlink: nothing to expose
        wanted.update((lexical, real))
    for path in wanted:
        if path == "/" or any(_is_within(r, path) for r in _RESERVED) or any(
            _is_within(path, f"/dev/{d}") for d in _DEVICES
        ) or _is_within(path, "/proc"):
            raise SandboxError(
                f"cannot expose {path} in the jail: it would cover the jail's own / /tmp /dev or /proc; "
                "install Python and the project somewhere else"
            )
    covered = []
    for path in sorted(wanted):  # sorted: an ancestor comes before everything under it
        if not any(_is_within(path, kept) for kept in covered):
            covered.append(path)
    workdir = "/sandbox"
    suffix = 0
    while any(_is_within(path, workdir) or _is_within(workdir, path) for path in covered):
        suffix += 1
        workdir = f"/sandbox-{suffix}"
    return [(os.path.realpath(path), path) for path in covered], workdir


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
    """Decode the harness's stream: JSON header lines, each followed by ``nbytes`` raw bytes of
    output; any other line is the launcher's or harness's stderr."""
    compile_error = None
    other: list[str] = []
    tests: dict[int, TestRun] = {}
    done = False
    total = 0
    pos = 0
    while pos < len(out):
        end = out.find(b"\n", pos)
        if end < 0:
            end = len(out)
        line = out[pos:end]
        pos = end + 1
        try:
            event = json.loads(line) if line.startswith(b"{") and len(line) < 65536 else None
        except (ValueError, RecursionError):
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("nbytes", 0), int):
            other.append(line[:300].decode("utf-8", "replace"))  # stderr text, or a partial last line
            continue
        nbytes = max(0, event.get("nbytes", 0))
        payload = out[pos:pos + nbytes]
        pos += nbytes
        kind = event.get("event")
        if kind == "setup_error":
            raise SandboxError(f"sandbox setup failed: {event.get('error')}")
        if kind == "compile_error":
            compile_error = str(event.get("error"))
        elif kind == "test" and isinstance(event.get("index"), int) and len(payload) == nbytes:
            status = event.get("status")
            total += nbytes
            output = payload.decode("utf-8", "replace") if status == STATUS_OK else None
            tests[event["index"]] = TestRun(
                status, output, event.get("error"), float(event.get("seconds", 0.0)), bool(event.get("truncated")),
            )
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
    return ProgramRun(None, [tests.get(i, missing) for i in range(n_tests)], total)


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
_MNT_DETACH = 2
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_SECCOMP, _PR_SET_NO_NEW_PRIVS = 1, 4, 22, 38
_MAX_OPEN_FILES = 256
_STDERR_TAIL = 4096  # bytes of a failing test's stderr read back for its error line

# seccomp: (AUDIT_ARCH, syscall numbers) per machine. Denied with EPERM (clone3: ENOSYS, so
# libc falls back to clone, whose namespace flags the filter can see and refuse).
_DENIED_SYSCALLS = (
    "add_key", "request_key", "keyctl", "ptrace", "process_vm_readv", "process_vm_writev",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "bpf", "perf_event_open",
    "userfaultfd", "kexec_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "name_to_handle_at", "io_uring_setup",
)
_SYSCALLS = {
    "x86_64": (0xC000003E, {
        "add_key": 248, "request_key": 249, "keyctl": 250, "ptrace": 101, "process_vm_readv": 310,
        "process_vm_writev": 311, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166,
        "pivot_root": 155, "chroot": 161, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "kexec_load": 246, "init_module": 175, "finit_module": 313, "delete_module": 176,
        "open_by_handle_at": 304, "name_to_handle_at": 303, "io_uring_setup": 425,
        "clone": 56, "clone3": 435,
    }),
    "aarch64": (0xC00000B7, {
        "add_key": 217, "request_key": 218, "keyctl": 219, "ptrace": 117, "process_vm_readv": 270,
        "process_vm_writev": 271, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39,
        "pivot_root": 41, "chroot": 51, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
        "kexec_load": 104, "init_module": 105, "finit_module": 273, "delete_module": 106,
        "open_by_handle_at": 265, "name_to_handle_at": 264, "io_uring_setup": 425,
        "clone": 220, "clone3": 435,
    }),
}
_CLONE_NS_FLAGS = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET


def _seccomp_arch():
    return _SYSCALLS.get(os.uname().machine)


def _seccomp_program() -> bytes:
    """The classic-BPF filter (struct sock_filter[]) for this machine."""
    import errno
    import struct

    arch, numbers = _seccomp_arch()
    ld_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill, errno_ret = 0x7FFF0000, 0x80000000, 0x00050000
    # Instructions as (code, jt label, jf label, k); labels resolved to relative jumps below.
    prog = [(ld_abs, None, None, 4), (jeq, None, "kill", arch), (ld_abs, None, None, 0)]
    if os.uname().machine == "x86_64":
        prog.append((jge, "eperm", None, 0x40000000))  # the x32 ABI: refuse it whole
    prog += [(jeq, "eperm", None, numbers[name]) for name in _DENIED_SYSCALLS]
    prog += [(jeq, "enosys", None, numbers["clone3"]), (jeq, "clone", None, numbers["clone"]),
             (ret, None, None, allow)]
    labels = {"clone": len(prog)}  # classic BPF jumps forward only: the targets come last
    prog += [(ld_abs, None, None, 16), (jset, "eperm", None, _CLONE_NS_FLAGS), (ret, None, None, allow)]
    labels["eperm"] = len(prog)
    prog.append((ret, None, None, errno_ret | errno.EPERM))
    labels["enosys"] = len(prog)
    prog.append((ret, None, None, errno_ret | errno.ENOSYS))
    labels["kill"] = len(prog)
    prog.append((ret, None, None, kill))
    out = b""
    for i, (code, jt, jf, k) in enumerate(prog):
        rel = lambda label: 0 if label is None else labels[label] - i - 1  # noqa: E731
        out += struct.pack("=HBBI", code, rel(jt), rel(jf), k)
    return out


def _install_seccomp(libc) -> None:
    """Deny the calls listed in ``_DENIED_SYSCALLS`` to this process and all its children."""
    filters = _seccomp_program()

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    prog = SockFprog(len(filters) // 8, filters)
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _check(libc.prctl(_PR_SET_SECCOMP, 2, ctypes.byref(prog), 0, 0), "prctl(SECCOMP)")


def _emit(event: dict, payload: bytes = b"") -> None:
    """One event: a JSON header line, then ``payload`` raw (its length is in the header)."""
    event["nbytes"] = len(payload)
    data = (json.dumps(event) + "\n").encode() + payload
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
    """Private mounts and chroot (runs as root, pid 1 of the new namespaces).

    Order: a read-only-to-be tmpfs root; one scratch tmpfs of ``disk_mb`` behind the work dir
    (owned by the jail's uid) and ``/tmp`` (root-owned, sticky); the devices; then the mount
    plan's binds (those under /tmp land in the scratch /tmp, on root-owned directories the
    program cannot rename); finally the root is remounted read-only and we chroot.
    """
    root, uid = req["jail_root"], req["uid"]
    limits = req["limits"]
    workdir = req["jail_workdir"]
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)
    _mount(libc, "tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    stage = root + "/.scratch"
    os.mkdir(stage, 0o700)
    _mount(
        libc, "tmpfs", stage, "tmpfs", _MS_NOSUID | _MS_NODEV,
        f"size={int(limits['disk_mb'])}m,nr_inodes=16384,mode=0755",
    )
    os.mkdir(stage + "/work", 0o700)
    os.chown(stage + "/work", uid, uid)
    os.mkdir(stage + "/tmp")
    os.chmod(stage + "/tmp", 0o1777)
    for source, target in ((stage + "/work", root + workdir), (stage + "/tmp", root + "/tmp")):
        os.mkdir(target, 0o755)
        _mount(libc, source, target, None, _MS_BIND)
    _check(libc.umount2(stage.encode(), _MNT_DETACH), "umount2 scratch")
    os.rmdir(stage)
    os.mkdir(root + "/dev", 0o755)
    for dev in _DEVICES:
        with open(f"{root}/dev/{dev}", "w"):
            pass
        _mount(libc, f"/dev/{dev}", f"{root}/dev/{dev}", None, _MS_BIND)
    for source, path in req["plan"]:
        target = root + path
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if os.path.isdir(source):
            os.mkdir(target, 0o755)
        else:
            with open(target, "w"):
                pass
        _mount(libc, source, target, None, _MS_BIND | _MS_REC)
        _mount(libc, None, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    _mount(libc, None, root, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    os.chroot(root)
    os.chdir(workdir)


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
            _install_seccomp(libc)
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
        try:
            _install_seccomp(libc)
        except OSError as exc:
            _emit({"event": "setup_error", "error": str(exc)})
            os._exit(3)
    if namespace:
        os.environ["HOME"] = os.environ["TMPDIR"] = req["jail_workdir"]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_rlimit(resource.RLIMIT_CORE, 0)
    _set_rlimit(resource.RLIMIT_NOFILE, _MAX_OPEN_FILES)
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
    budget = [int(float(limits["output_mb"]) * _MB)]  # output bytes left for this program
    stop = False
    for index, test_input in enumerate(req["inputs"]):
        if stop:
            _emit({"event": "test", "index": index, "status": STATUS_SKIPPED, "error": "earlier test failed", "seconds": 0.0})
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _emit({"event": "test", "index": index, "status": STATUS_TIMEOUT, "error": "program time limit", "seconds": 0.0})
            continue
        run, payload = _run_one_test(
            header, compiled, test_input, req["fn_name"], limits, min(float(limits["timeout"]), remaining), namespace, budget,
        )
        run["index"] = index
        run["event"] = "test"
        _emit(run, payload)
        if req["stop_on_error"] and run["status"] != STATUS_OK:
            stop = True


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
                  budget: list[int]) -> tuple[dict, bytes]:
    """Run one test in a forked child; returns its event and its output (within ``budget``,
    the program's output bytes left, which it decreases)."""
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
