"""The seccomp filter of every jail (and of ``process`` isolation): a classic-BPF program,
built here from per-architecture syscall tables, that refuses keyrings, ptrace and the other
calls that reach into another process (``kcmp``, ``process_madvise``, ``pidfd_getfd``), mount
and namespace calls (the new mount API too), reboot, kexec and the rest of ``_DENIED_SYSCALLS``
with EPERM. Installed in the jail as its last step before the program, after the jail build
(which itself uses mount_setattr); ``_seccomp_arch`` also tells the training process whether
this machine has a table.
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
    }),
}
_CLONE_NS_FLAGS = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_MAX_JUMP = 255  # a classic-BPF jump offset (jt, jf) is one byte


def _seccomp_arch():
    return _SYSCALLS.get(os.uname().machine)


def _seccomp_program() -> bytes:
    """The classic-BPF filter (struct sock_filter[]) for this machine."""
    arch, numbers = _seccomp_arch()
    return _build_filter(arch, numbers, _DENIED_SYSCALLS, refuse_x32=os.uname().machine == "x86_64")


def _build_filter(arch: int, numbers: dict[str, int], denied: Sequence[str], *, refuse_x32: bool) -> bytes:
    """The filter as one flat chain: check the architecture, one compare per call of ``denied``
    (EPERM), clone3 (ENOSYS) and clone's namespace flags (EPERM), allow the rest.

    Classic BPF jumps forward only, by at most ``_MAX_JUMP`` instructions, and the return
    targets come last, so the chain's length is bounded: a ``denied`` too long for the jumps
    raises ``ValueError`` saying how many calls fit (the kernel's own cap, 4096 instructions,
    is far beyond it).
    """
    import errno
    import struct

    ld_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill, errno_ret = 0x7FFF0000, 0x80000000, 0x00050000
    # Instructions as (code, jt label, jf label, k); labels resolved to relative jumps below.
    prog = [(ld_abs, None, None, 4), (jeq, None, "kill", arch), (ld_abs, None, None, 0)]
    if refuse_x32:
        prog.append((jge, "eperm", None, 0x40000000))  # the x32 ABI: refuse it whole
    prog += [(jeq, "eperm", None, numbers[name]) for name in denied]
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


def _install_seccomp(libc) -> None:
    """Deny the calls listed in ``_DENIED_SYSCALLS`` to this process and all its children."""
    filters = _seccomp_program()

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    prog = SockFprog(len(filters) // 8, filters)
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _check(libc.prctl(_PR_SET_SECCOMP, 2, ctypes.byref(prog), 0, 0), "prctl(SECCOMP)")
