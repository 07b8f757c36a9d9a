"""Whether this machine can run namespace isolation, decided once and independently of the
sandbox code, so a jail that fails to build here is a test failure, never a skip."""
import os

import pytest

from rltrain.rewards.sandbox import Sandbox

_CAP_SYS_ADMIN = 21
_NAMESPACES = ("mnt", "pid", "net", "ipc", "uts")


def namespace_support() -> str | None:
    """None if namespace isolation must work here; else why this machine cannot run it."""
    if os.geteuid() != 0:
        return f"not root (euid {os.geteuid()}): rltrain's namespace jail needs root"
    try:
        with open("/proc/self/status") as fh:
            cap_eff = next(int(line.split()[1], 16) for line in fh if line.startswith("CapEff:"))
    except (OSError, StopIteration):
        return "cannot read /proc/self/status"
    if not cap_eff >> _CAP_SYS_ADMIN & 1:
        return "root without CAP_SYS_ADMIN (a restricted container)"
    missing = [ns for ns in _NAMESPACES if not os.path.exists(f"/proc/self/ns/{ns}")]
    if missing:
        return f"kernel without {', '.join(missing)} namespaces"
    if os.uname().machine not in ("x86_64", "aarch64"):
        return f"no seccomp syscall table for {os.uname().machine}"
    return None


NAMESPACE_UNSUPPORTED = namespace_support()


def namespace_sandbox(*args, **kwargs) -> Sandbox:
    """A namespace Sandbox; skips (naming why) only where this machine cannot run one."""
    if NAMESPACE_UNSUPPORTED is not None:
        pytest.skip(f"namespace isolation cannot run on this machine: {NAMESPACE_UNSUPPORTED}")
    return Sandbox(*args, isolation="namespace", **kwargs)  # raises (the test fails) if the jail breaks


def uid_processes(uids: range) -> list[int]:
    """Host pids of processes whose real uid lies in ``uids``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) in uids:
                            found.append(int(entry))
                        break
        except OSError:
            continue
    return found
