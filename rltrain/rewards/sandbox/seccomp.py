"""The seccomp filters of every jail (and of ``process`` isolation): classic-BPF programs,
built here from per-architecture syscall tables.

The jail's filter refuses keyrings, ptrace and the other calls that reach into another process
(``kcmp``, ``process_madvise``, ``pidfd_getfd``), mount and namespace calls (the new mount API
too), reboot, kexec, the page-cache and lock channels between jails, and the rest of
``_DENIED_SYSCALLS`` with EPERM; ``_ARG_RULES`` limit calls by their arguments (resource and
scheduling calls to the caller itself, no record locks, local socket families only). It is
installed in the jail as its last step before the harness, after the jail build (which itself
uses mount_setattr) and after the harness made the memfds its tests reuse (memfd_create and
SysV shared memory are refused: they hold memory outside RLIMIT_AS). ``_seccomp_arch`` also
tells the training process whether this machine has a table.
"""
from __future__ import annotations

import ctypes
import os
from typing import Sequence

from .libc import _PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _check

# seccomp: (AUDIT_ARCH, syscall numbers) per machine. Denied with EPERM (clone3: ENOSYS, so
# libc falls back to clone, whose namespace flags the filter can see and refuse). Numbers from
# the kernel's arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h
# (arm64's); a test checks them against the installed kernel headers.
_DENIED_SYSCALLS = (
    "add_key", "request_key", "keyctl", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd",
    "kcmp", "process_madvise",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "bpf", "perf_event_open", "userfaultfd", "kexec_load", "kexec_file_load", "reboot",
    "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "name_to_handle_at", "io_uring_setup",
    # Channels between programs through what jails share (docs/sandbox.md): evicting pages of a
    # bound file from the page cache and probing which pages are resident; locks on bound files;
    # Linux AIO (RWF_NOWAIT probing). Plus calls no scoring program needs.
    "fadvise64", "mincore", "cachestat", "preadv2", "pwritev2", "io_setup", "flock",
    "modify_ldt", "memfd_secret",
    # Memory outside RLIMIT_AS (where no memory cgroup exists, memfds and SysV segments escaped
    # the memory and disk limits); the harness makes its memfds before this filter.
    "memfd_create", "shmget",
)
_SYSCALLS = {
    "x86_64": (0xC000003E, {
        "add_key": 248, "request_key": 249, "keyctl": 250, "ptrace": 101, "process_vm_readv": 310,
        "process_vm_writev": 311, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166,
        "pivot_root": 155, "chroot": 161, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "kexec_load": 246, "init_module": 175, "finit_module": 313, "delete_module": 176,
        "open_by_handle_at": 304, "name_to_handle_at": 303, "io_uring_setup": 425,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "pidfd_getfd": 438, "kexec_file_load": 320, "reboot": 169,
        "kcmp": 312, "process_madvise": 440, "clone": 56, "clone3": 435,
        "fadvise64": 221, "mincore": 27, "cachestat": 451, "preadv2": 327, "pwritev2": 328, "io_setup": 206,
        "flock": 73, "modify_ldt": 154, "memfd_secret": 447, "memfd_create": 319, "shmget": 29,
        "prlimit64": 302, "setpriority": 141, "sched_setparam": 142, "sched_setscheduler": 144,
        "sched_setaffinity": 203, "sched_setattr": 314, "ioprio_set": 251, "fcntl": 72, "madvise": 28,
        "socket": 41, "socketpair": 53,
    }),
    "aarch64": (0xC00000B7, {
        "add_key": 217, "request_key": 218, "keyctl": 219, "ptrace": 117, "process_vm_readv": 270,
        "process_vm_writev": 271, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39,
        "pivot_root": 41, "chroot": 51, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
        "kexec_load": 104, "init_module": 105, "finit_module": 273, "delete_module": 106,
        "open_by_handle_at": 265, "name_to_handle_at": 264, "io_uring_setup": 425,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "pidfd_getfd": 438, "kexec_file_load": 294, "reboot": 142,
        "kcmp": 272, "process_madvise": 440, "clone": 220, "clone3": 435,
        "fadvise64": 223, "mincore": 232, "cachestat": 451, "preadv2": 286, "pwritev2": 287, "io_setup": 0,
        "flock": 32, "memfd_secret": 447, "memfd_create": 279, "shmget": 194,
        "prlimit64": 261, "setpriority": 140, "sched_setparam": 118, "sched_setscheduler": 119,
        "sched_setaffinity": 122, "sched_setattr": 274, "ioprio_set": 30, "fcntl": 25, "madvise": 233,
        "socket": 198, "socketpair": 199,
    }),
}
_CLONE_NS_FLAGS = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_MAX_JUMP = 255  # a classic-BPF jump offset (jt, jf) is one byte


class _ArgRule:
    """A call allowed only for some values of its arguments (the low 32 bits: every argument
    checked here is a C ``int``). Exactly one of:

    - ``all_equal``: ``((arg index, value), ...)``: allowed when every listed argument equals
      its value (``prlimit64(0, ...)``: only the calling process itself);
    - ``arg``, ``one_of``: allowed when argument ``arg`` is one of ``one_of``;
    - ``arg``, ``none_of``: allowed unless argument ``arg`` is one of ``none_of``.

    Refused calls fail with ``errno`` (default EPERM).
    """

    def __init__(self, *, all_equal=(), arg=None, one_of=(), none_of=(), errno=1):
        self.all_equal, self.arg, self.one_of, self.none_of, self.errno = all_equal, arg, one_of, none_of, errno


# Calls that act on another process by pid (0 = the caller): a program may use them on itself
# only, so the harness that reports its tests is out of its reach (a program once lowered the
# harness's RLIMIT_AS). setpriority and ioprio_set also name process groups and users: only
# "this process" (which 0 = PRIO_PROCESS / 1 = IOPRIO_WHO_PROCESS, who 0) is allowed.
_F_LOCK_COMMANDS = (5, 6, 7, 36, 37, 38, 1024)  # F_GETLK, F_SETLK(W), F_OFD_GETLK/SETLK(W), F_SETLEASE
_ARG_RULES = {
    "prlimit64": _ArgRule(all_equal=((0, 0),)),
    "sched_setparam": _ArgRule(all_equal=((0, 0),)),
    "sched_setscheduler": _ArgRule(all_equal=((0, 0),)),
    "sched_setaffinity": _ArgRule(all_equal=((0, 0),)),
    "sched_setattr": _ArgRule(all_equal=((0, 0),)),
    "setpriority": _ArgRule(all_equal=((0, 0), (1, 0))),
    "ioprio_set": _ArgRule(all_equal=((0, 1), (1, 0))),
    # Record locks and leases on a bound file are seen by every jail that binds it.
    "fcntl": _ArgRule(arg=1, none_of=_F_LOCK_COMMANDS),
    # MADV_COLD (20) and MADV_PAGEOUT (21) evict pages of a shared file mapping.
    "madvise": _ArgRule(arg=2, none_of=(20, 21)),
    # Local sockets only (AF_UNIX, AF_INET, AF_INET6 inside the empty network namespace):
    # AF_VSOCK and the rest live outside the namespace or reach the kernel. EAFNOSUPPORT.
    "socket": _ArgRule(arg=0, one_of=(1, 2, 10), errno=97),
    "socketpair": _ArgRule(arg=0, one_of=(1, 2, 10), errno=97),
}


def _seccomp_arch():
    return _SYSCALLS.get(os.uname().machine)


def _denied_here(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` that exist on this machine (modify_ldt is x86 only)."""
    arch = _seccomp_arch()
    return tuple(name for name in names if arch and name in arch[1])



def _seccomp_program(denied: Sequence[str] = _DENIED_SYSCALLS, arg_rules: dict | None = None) -> bytes:
    """The classic-BPF filter (struct sock_filter[]) for this machine."""
    arch, numbers = _seccomp_arch()
    rules = _ARG_RULES if arg_rules is None else arg_rules
    return _build_filter(arch, numbers, _denied_here(denied), refuse_x32=os.uname().machine == "x86_64",
                         arg_rules={name: rule for name, rule in rules.items() if name in numbers})


def _build_filter(arch: int, numbers: dict[str, int], denied: Sequence[str], *, refuse_x32: bool,
                  arg_rules: dict[str, _ArgRule] | None = None) -> bytes:
    """The filter as one flat chain: check the architecture, one compare per call of ``denied``
    (EPERM) and per call of ``arg_rules`` (a jump to its argument checks), clone3 (ENOSYS) and
    clone's namespace flags (EPERM), allow the rest.

    Classic BPF jumps forward only, by at most ``_MAX_JUMP`` instructions, and the return
    targets come last, so the chain's length is bounded: a ``denied`` too long for the jumps
    raises ``ValueError`` saying how many calls fit (the kernel's own cap, 4096 instructions,
    is far beyond it).
    """
    import errno
    import struct

    ld_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill, errno_ret = 0x7FFF0000, 0x80000000, 0x00050000
    arg_rules = arg_rules or {}
    low_word = lambda index: 16 + 8 * index  # noqa: E731 - seccomp_data.args[index], little-endian low half
    # Instructions as (code, jt label, jf label, k); labels resolved to relative jumps below.
    prog = [(ld_abs, None, None, 4), (jeq, None, "kill", arch), (ld_abs, None, None, 0)]
    if refuse_x32:
        prog.append((jge, "eperm", None, 0x40000000))  # the x32 ABI: refuse it whole
    prog += [(jeq, "eperm", None, numbers[name]) for name in denied]
    prog += [(jeq, f"rule:{name}", None, numbers[name]) for name in arg_rules]
    prog += [(jeq, "enosys", None, numbers["clone3"]), (jeq, "clone", None, numbers["clone"]),
             (ret, None, None, allow)]
    labels = {"clone": len(prog)}  # classic BPF jumps forward only: the targets come last
    prog += [(ld_abs, None, None, 16), (jset, "eperm", None, _CLONE_NS_FLAGS), (ret, None, None, allow)]
    refusals = {errno.EPERM: "eperm", errno.ENOSYS: "enosys"}
    for name, rule in arg_rules.items():
        labels[f"rule:{name}"] = len(prog)
        refuse = refusals.setdefault(rule.errno, f"errno:{rule.errno}")
        if rule.all_equal:
            for index, value in rule.all_equal:
                prog += [(ld_abs, None, None, low_word(index)), (jeq, None, refuse, value)]
            prog.append((ret, None, None, allow))
        elif rule.one_of:
            prog.append((ld_abs, None, None, low_word(rule.arg)))
            prog += [(jeq, "allow", None, value) for value in rule.one_of]
            prog.append((ret, None, None, errno_ret | rule.errno))
        else:
            prog.append((ld_abs, None, None, low_word(rule.arg)))
            prog += [(jeq, refuse, None, value) for value in rule.none_of]
            prog.append((ret, None, None, allow))
    if any(rule.one_of for rule in arg_rules.values()):
        labels["allow"] = len(prog)
        prog.append((ret, None, None, allow))
    for number, label in refusals.items():
        labels[label] = len(prog)
        prog.append((ret, None, None, errno_ret | number))
    labels["kill"] = len(prog)
    prog.append((ret, None, None, kill))
    jumps = [[0 if label is None else labels[label] - i - 1 for label in (jt, jf)]
             for i, (_, jt, jf, _) in enumerate(prog)]
    farthest = max(max(pair) for pair in jumps)  # the architecture check's jump to "kill"
    if farthest > _MAX_JUMP:
        raise ValueError(
            f"seccomp filter: {len(denied)} denied syscalls make a jump of {farthest} instructions, but a "
            f"classic-BPF jump reaches at most {_MAX_JUMP} (the filter is one flat chain); at most "
            f"{len(denied) - (farthest - _MAX_JUMP)} denied syscalls fit"
        )
    return b"".join(struct.pack("=HBBI", code, jt, jf, k) for (code, _, _, k), (jt, jf) in zip(prog, jumps))


def _install_seccomp(libc, program: bytes | None = None) -> None:
    """Install ``program`` (default: ``_DENIED_SYSCALLS`` and ``_ARG_RULES``) for this process
    and all its children. Filters stack: a later one can only refuse more."""
    filters = _seccomp_program() if program is None else program

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    prog = SockFprog(len(filters) // 8, filters)
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _check(libc.prctl(_PR_SET_SECCOMP, 2, ctypes.byref(prog), 0, 0), "prctl(SECCOMP)")
