"""Run untrusted Python programs against test inputs, contained: the engine behind ``reward=code``.

One program = one jail. The training process never imports or executes the program; it
starts a fresh interpreter on this package (``python -I -S -B sandbox/__main__.py``, the
zygote, which forks one launcher per program) and sends the launcher a JSON request::

    training process ──Popen──► launcher (root, host namespaces)
                                  joins the slot's cgroups (pids.max, memory limit),
                                  unshare(mount | pid | net | ipc | uts), fork
                                    └─► harness = pid 1 of the new pid namespace
                                          private mounts; chroot into a read-only tmpfs root that
                                          holds read-only binds of the Python install,
                                          site-packages, /usr and /lib only (the *mount plan*),
                                          and one private size-limited tmpfs behind both the
                                          program's cwd ``/sandbox`` and a sticky ``/tmp``;
                                          drops to the slot's harness uid (keeping the
                                          program's uid as its saved uid); rlimits; a seccomp
                                          filter; compiles the program once, says ``ready``,
                                          then for each test:
                                            fork ─► test child: its own input copied into its
                                                    stdin memfd, stdout/stderr on memfds (made
                                                    once, emptied per test), the program's uid,
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
  read-only, nosuid and nodev, down to whatever the host has mounted under an exposed path
  (``mount_setattr`` with ``AT_RECURSIVE``, else a remount of each; a jail with a writable
  mount left is refused), and the one writable tmpfs disappears with the namespace.
- ipc namespace: SysV queues, semaphores and shared memory die with the program.
- unprivileged uids, two per concurrent jail (the program's ``uid_base + slot``, the
  harness's ``uid_base + 512 + slot``): no capabilities, so the chroot cannot be left and
  RLIMIT_NPROC applies (it is ignored for root), counted per jail; the program cannot act on
  its harness as its owner.
- seccomp filter (x86_64, aarch64): keyring calls (``add_key``, ``keyctl``, ``request_key``:
  keyrings are per uid, not per namespace, so they would carry data to the next program of
  the slot), ``ptrace``, ``process_vm_*``, ``pidfd_getfd``, ``kcmp``, ``process_madvise``,
  mount and namespace calls (the new mount API too: ``open_tree``, ``move_mount``, ``fsopen``,
  ``fsconfig``, ``fsmount``, ``fspick``, ``mount_setattr``), ``bpf``, ``perf_event_open``,
  ``userfaultfd``, ``io_uring``, ``reboot``, ``kexec_*`` and module loading fail with EPERM;
  resource and scheduling calls work on the caller only (the harness is out of reach); the
  page-cache and lock channels between jails (fadvise, mincore, cachestat, RWF_NOWAIT reads,
  AIO, MADV_COLD/PAGEOUT, flock, fcntl locks) and non-local socket families (AF_VSOCK...) are
  refused; so are memfd_create and SysV shared memory (the harness makes its memfds first)
  (docs/sandbox.md).
- rlimits: address space (RLIMIT_AS), CPU seconds per test, file size (bounds stdout too:
  outputs go to memfds), process count, open files, no core dumps.
- cgroups (v1 or v2, when writable): ``pids.max`` per jail bounds a fork bomb even across
  uids, and a memory limit bounds the sum over all processes (rlimits bound each one).
- output cap: at most ``Limits.output_mb`` of output per program, all its tests together, is
  read back (a test past it is a runtime error with ``truncated``); the training process reads
  at most that much from the launcher, so its memory per program is bounded by the cap.
- comparison happens in the training process (``code.py``): the jail receives test inputs
  only, never expected outputs, so a program can neither read nor forge its verdict. Outputs
  come back as bytes; ``Sandbox.run_many_safely(jobs, judge=...)`` judges each run in its
  worker and releases it, so the training process holds output for the running programs only.
- ``ready``: once the harness has built the jail and compiled the program it says so; a
  harness that dies after that is the program's runtime error, before it the sandbox's.

The mount plan (``mount_plan``) exposes every needed host path at its own path *and* at its
resolved path, so any layout works: an interpreter, venv or project under /tmp, /home, /opt,
behind a symlinked prefix, or nested in one another. Paths under /tmp are bound inside the
jail's own /tmp; a path that would hide the jail's /tmp, /dev, work dir or /proc is refused.

Isolation fails closed: ``isolation="auto"`` means ``namespace``, and raises
``NamespaceUnavailable`` (with the reason) where the jail cannot be built, never a silent
fallback. ``isolation="process"`` has to be asked for: a plain subprocess with the rlimits, a
scrubbed environment, a fresh temporary directory, the seccomp filter, cgroups where writable,
and a guard that disables ``socket``, ``fork``, ``kill`` and ``subprocess`` inside the
program. That guard stops accidents, not adversaries: ``process`` is not a containment
boundary (seccomp and rlimits only); the program runs as the training process's user on the
host (as root, with all of root's capabilities, when that user is root) and can reach whatever
that user can.

Where each part lives (trusted = the training process; jail = zygote, launcher, harness, tests):

- ``types``: ``Limits`` and ``Job`` in, ``ProgramRun`` and ``TestRun`` out, the errors.
- ``pool``: ``Sandbox`` (trusted): worker slots, the zygote, the probe jail, cgroups, the
  capped read of each program's events.
- ``host``: the mount plan and the cgroup hierarchy, read on the host (trusted).
- ``protocol``: the test statuses and the framed event stream, written in the jail, read back
  in the training process.
- ``launcher``: the zygote, the launcher (cgroups, unshare) and the jail build (mounts,
  chroot, uid drop, rlimits) (jail).
- ``seccomp``: the syscall filter (jail).
- ``harness``: one forked, rlimited child per test and its capped output (jail).
- ``libc``: the ctypes calls and flags behind the mounts, namespaces and prctls (jail).
- ``__main__``: what the zygote runs.

Every module here imports only the standard library and its siblings, relatively: the zygote
loads this whole package from its folder, outside rltrain (see ``__main__.py``).
"""
from __future__ import annotations

from .harness import HEADER
from .host import mount_plan
from .pool import Sandbox
from .protocol import STATUS_OK, STATUS_RUNTIME_ERROR, STATUS_SKIPPED, STATUS_TIMEOUT
from .types import Job, Limits, NamespaceUnavailable, ProgramRun, SandboxError, TestRun

__all__ = [
    "HEADER",
    "STATUS_OK",
    "STATUS_RUNTIME_ERROR",
    "STATUS_SKIPPED",
    "STATUS_TIMEOUT",
    "Job",
    "Limits",
    "NamespaceUnavailable",
    "ProgramRun",
    "Sandbox",
    "SandboxError",
    "TestRun",
    "mount_plan",
]
