"""The jail side up to the first test: the zygote, one launcher per program, and the jail.

The zygote (started once per ``Sandbox``, see ``__main__.py``) forks a launcher for each
program. The launcher reads the request, joins the slot's cgroups, unshares the mount, pid,
net, ipc and uts namespaces and forks the harness, pid 1 of the new pid namespace, which
builds the jail (private mounts, every bind read-only down to its submounts, chroot), drops
to the slot's uid, sets the rlimits, installs the seccomp filter (last: the jail build needs
the mount calls it denies) and hands over to ``harness._run_tests``. ``process`` isolation
skips the namespaces and the jail.
"""
from __future__ import annotations

import json
import math
import os
import re
import resource
import signal
import sys

from .harness import HEADER, _run_tests, test_memfds
from .host import _DEVICES, _is_within
from .libc import (
    _CLONE_NEWIPC,
    _CLONE_NEWNET,
    _CLONE_NEWNS,
    _CLONE_NEWPID,
    _CLONE_NEWUTS,
    _MNT_DETACH,
    _MOUNT_ATTR_NODEV,
    _MOUNT_ATTR_NOSUID,
    _MOUNT_ATTR_RDONLY,
    _MS_BIND,
    _MS_NODEV,
    _MS_NOEXEC,
    _MS_NOSUID,
    _MS_NOSYMFOLLOW,
    _MS_PRIVATE,
    _MS_RDONLY,
    _MS_REC,
    _MS_REMOUNT,
    _PR_SET_DUMPABLE,
    _PR_SET_NO_NEW_PRIVS,
    _PR_SET_PDEATHSIG,
    _check,
    _libc,
    _mount,
    _mount_setattr_recursive,
    _set_rlimit,
)
from .protocol import _emit
from .seccomp import _install_seccomp, _seccomp_arch
from .types import _MB

_MAX_OPEN_FILES = 256


def _mount_table() -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) of every mount of this mount namespace, from
    /proc/self/mountinfo (where a space in a mount point reads ``\\040``)."""
    with open("/proc/self/mountinfo", "rb") as fh:
        lines = fh.read().splitlines()
    table = []
    for line in lines:
        fields = line.split(b" ")
        point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
        table.append((os.fsdecode(point), set(fields[5].decode().split(","))))
    return table


def _read_only_by_setattr(libc, target: str) -> None:
    """Make the mount at ``target`` and every mount under it read-only, nosuid and nodev, in
    one mount_setattr(2) call (Linux 5.12+); their other flags (noexec...) stay."""
    _mount_setattr_recursive(
        libc, _seccomp_arch()[1]["mount_setattr"], target, _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV,
    )


def _read_only_by_remount(libc, target: str) -> None:
    """The same without mount_setattr: remount each mount at or under ``target`` (listed in
    /proc/self/mountinfo) as a read-only, nosuid, nodev bind, keeping its noexec and
    nosymfollow. A mount hidden under another at the same place is out of reach of a
    remount by path: it stays as it was, and ``_check_read_only`` refuses the jail."""
    for point, options in _mount_table():
        if _is_within(point, target):
            keep = (_MS_NOEXEC if "noexec" in options else 0) | (_MS_NOSYMFOLLOW if "nosymfollow" in options else 0)
            _mount(libc, None, point, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | keep)


def _check_read_only(targets: list[str]) -> None:
    """Raise unless every mount at or under each of ``targets`` is read-only, nosuid and nodev."""
    loose = [point for point, options in _mount_table()
             if any(_is_within(point, t) for t in targets) and not {"ro", "nosuid", "nodev"} <= options]
    if loose:
        raise OSError(
            f"{len(loose)} mount(s) exposed in the jail are not read-only, nosuid and nodev "
            f"({', '.join(loose[:3])}); refusing to run programs in it"
        )


def _build_jail(libc, req: dict) -> None:
    """Private mounts and chroot (runs as root, pid 1 of the new namespaces).

    Order: a read-only-to-be tmpfs root; one scratch tmpfs of ``disk_mb`` behind the work dir
    (owned by the jail's uid) and ``/tmp`` (root-owned, sticky); the devices; then the mount
    plan's binds (those under /tmp land in the scratch /tmp, on root-owned directories the
    program cannot rename). Each bind is recursive, so it brings along whatever the host has
    mounted under the path; all of those are made read-only, nosuid and nodev too, and the
    jail is refused if any is not. Finally the root is remounted read-only and we chroot.
    """
    root, uid = os.path.realpath(req["jail_root"]), req["uid"]  # real: compared with mountinfo
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
    targets = []
    for source, path in req["plan"]:
        target = root + path
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if os.path.isdir(source):
            os.mkdir(target, 0o755)
        else:
            with open(target, "w"):
                pass
        _mount(libc, source, target, None, _MS_BIND | _MS_REC)
        try:
            _read_only_by_setattr(libc, target)
        except OSError:  # Linux < 5.12, or refused by a container's own filter: mount by mount
            _read_only_by_remount(libc, target)
        targets.append(target)
    _check_read_only(targets)  # fail closed, whichever way the binds were made read-only
    _mount(libc, None, root, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    os.chroot(root)
    os.chdir(workdir)


def _drop_privileges(libc, harness_uid: int, program_uid: int) -> None:
    """Become the harness's uid, keeping the program's uid as the saved one only: each test
    process switches to it for good (``harness._test_child``), and then cannot act on the
    harness as its owner (the harness's real and effective uid are not its own)."""
    os.setgroups([])
    os.setresgid(harness_uid, harness_uid, program_uid)
    os.setresuid(harness_uid, harness_uid, program_uid)
    # Credentials changed, which clears the parent-death signal: set it now.
    _check(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _check(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(DUMPABLE)")
    if 0 in os.getresuid() or 0 in os.getresgid():
        raise OSError("privileges were not dropped")


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


def _read_request() -> tuple[dict, int]:
    """The request: the length of a JSON header (everything but the test inputs) on one line,
    the header, then the inputs, which go
    straight into a memfd (returned) through one reused buffer that is zeroed afterwards, so
    no test input stays in the memory every test process inherits."""
    size = bytearray()
    while not size.endswith(b"\n") and len(size) < 16:  # the header's length, in decimal
        size += os.read(0, 1) or b"!"
    header = bytearray()
    left = int(size) if size[:-1].isdigit() else -1
    while left > 0:
        chunk = os.read(0, min(left, 1 << 20))
        if not chunk:
            break
        header += chunk
        left -= len(chunk)
    if left != 0:
        raise OSError("truncated sandbox request")
    req = json.loads(header)
    inputs_fd = os.memfd_create("inputs")
    buf = bytearray(1 << 16)
    view = memoryview(buf)
    while True:
        n = os.readv(0, [view])
        if not n:
            break
        written = 0
        while written < n:
            written += os.write(inputs_fd, view[written:n])
    view[:] = bytes(len(buf))
    view.release()
    if os.fstat(inputs_fd).st_size != sum(req["input_sizes"]):
        raise OSError("truncated sandbox request (test inputs)")
    return req, inputs_fd


def _join_cgroups(procs_files: list[str]) -> None:
    """Move this process into each cgroup (by its ``cgroup.procs`` file). Plain fds, no Python
    file objects: nothing naming the cgroups (and the trainer's pid in them) outlives this call
    in the memory the test processes inherit."""
    while procs_files:
        fd = os.open(procs_files.pop(), os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)


def _jail_main() -> None:
    req, inputs_fd = _read_request()
    memfds = test_memfds()  # before the seccomp filter, which refuses memfd_create
    limits = req["limits"]
    if req["isolation"] not in ("namespace", "process"):  # only an explicit "process" runs uncontained
        _emit({"event": "setup_error", "error": f"unknown isolation {req['isolation']!r}"})
        os._exit(3)
    namespace = req["isolation"] == "namespace"
    libc = _libc()
    if namespace:
        try:
            _join_cgroups(req.pop("cgroup_procs"))  # popped: test processes inherit this memory
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
            for key in ("plan", "jail_root"):
                req.pop(key)
            _drop_privileges(libc, req["harness_uid"], req["uid"])
            _set_rlimit(resource.RLIMIT_NPROC, int(limits["max_processes"]))
            _install_seccomp(libc)
        except OSError as exc:
            _emit({"event": "setup_error", "error": str(exc)})
            os._exit(3)
    else:
        try:
            _join_cgroups(req.pop("cgroup_procs"))
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
    _run_tests(req, namespace, inputs_fd, memfds)
    _emit({"event": "done"})
    os._exit(0)
