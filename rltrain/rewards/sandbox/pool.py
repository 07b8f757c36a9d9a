"""``Sandbox``, the public entry point, in the training process: ``num_workers`` slots (one
uid and one pair of cgroups each), the zygote that forks one launcher per program, the probe
that builds one real jail before anything runs, and the capped read of each program's
event stream.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import stat
import sys
import threading
import time
from dataclasses import asdict

from .host import _jail_ro_paths, _own_cgroup_dir, _remove_stale_cgroups, _site_packages, mount_plan
from .protocol import _parse_run
from .seccomp import _seccomp_arch
from .types import _MB, Job, Limits, NamespaceUnavailable, ProgramRun, SandboxError

_PROBE_CACHE: dict[tuple, str | None] = {}
_INSTANCES = itertools.count()
_UIDS_PER_SANDBOX = 1024  # uids of one Sandbox: uid_base + block * 1024 + slot (programs), + 512 (harnesses)
_MAX_WORKERS = _UIDS_PER_SANDBOX // 2
_UID_BLOCKS = 250_000  # 1_880_000_000 + 250_000 * 1024 stays below 2**31
_ENTRY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py")  # what the zygote runs


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
            concurrent rewards and ranks do not share RLIMIT_NPROC accounting): the program
            of jail ``i`` runs as uid/gid ``block start + i``, its harness as ``block start
            + 512 + i``. The default range,
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
        if not 1 <= self.num_workers <= _MAX_WORKERS:
            raise ValueError(f"num_workers must be in [1, {_MAX_WORKERS}], got {self.num_workers}")
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
                f"unprivileged uid {self.uid_base}+slot (the harness: +{_MAX_WORKERS}+slot)",
                "RLIMIT_NPROC",
            ]
        else:
            out += ["NOT CONTAINED: runs as this user on the host", "fresh temp dir",
                    "guard preamble (socket/fork/kill/subprocess disabled)"]
        out += ["seccomp (keyrings, ptrace, mount/namespace calls, calls on other pids, page-cache and lock "
                "channels, non-local sockets denied)" if _seccomp_arch() else "no seccomp (unknown arch)",
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

    def run_many_safely(self, jobs: list[Job], judge=None) -> list:
        """``run_many``, except that a job whose sandbox failed gets its ``SandboxError`` in its
        place (the other jobs still run); the isolation never changes.

        ``judge(index, run)``, when given, is called on each ``ProgramRun`` in the worker as
        soon as it finishes, and its result takes the run's place: the run (its outputs) is
        released at once, so the memory held is bounded by the workers, not by the batch.
        """
        def one(item):
            index, job = item
            try:
                run = self._run_in_slot(job)
            except SandboxError as exc:
                return exc
            return run if judge is None else judge(index, run)

        if not jobs:
            return []
        self.run_many([])  # nothing to run: just starts the pool
        return list(self._pool.map(one, enumerate(jobs)))

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
        # Each input as the bytes its test gets: stdin text, or the JSON of the call's arguments.
        inputs = [json.dumps(x).encode() if job.fn_name is not None else
                  (x if isinstance(x, str) else str(x)).encode("utf-8", "surrogatepass") for x in job.inputs]
        request = {
            "isolation": isolation,
            "code": job.code,
            "input_sizes": [len(x) for x in inputs],
            "fn_name": job.fn_name,
            "stop_on_error": job.stop_on_error,
            "limits": asdict(limits),
            "uid": self.uid_base + slot,
            "harness_uid": self.uid_base + _MAX_WORKERS + slot,
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
        received = bytearray()
        # The harness caps the output it sends; this cap (output + per-test headers and error
        # lines) bounds what a misbehaving harness could make the training process hold.
        max_bytes = int(limits.output_mb * _MB) + (64 << 10) + 8192 * len(job.inputs)
        try:
            pidfd = self._zygote_fork(theirs)
            theirs.close()
            header = json.dumps(request).encode()
            ours.sendall(b"%d\n%s" % (len(header), header))
            for data in inputs:
                ours.sendall(data)
            del inputs
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
                if len(received) + len(chunk) > max_bytes:
                    flooded = True
                    if pidfd is not None:
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    break
                received += chunk
        finally:
            ours.close()
            theirs.close()
            if pidfd is not None:
                os.close(pidfd)
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        if flooded:
            raise SandboxError(f"the sandbox harness sent more than {max_bytes} bytes (output cap broken)")
        return _parse_run(received, len(job.inputs), killed)

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
                        [sys.executable, "-I", "-S", "-B", _ENTRY, "--zygote", str(child.fileno())],
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
                out = (probe.tests[0].text or "") if probe.tests else ""
                ok = probe.compile_error is None and out.startswith("42 ")
                if ok:  # an import path missing in the jail but present on the host: a plan bug
                    ok = not [p for p in json.loads(out[3:]) if os.path.exists(p)]
                test = probe.tests[0] if probe.tests else None
                what = probe.compile_error or (test and (test.error or test.text))
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
