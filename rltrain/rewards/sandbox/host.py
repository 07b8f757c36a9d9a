"""What a jail is built from on the host, decided in the training process: the mount plan (the
host paths a program may read, as read-only binds) and the cgroup hierarchy the jails join.
"""
from __future__ import annotations

import os
import sys

from .types import SandboxError


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
_DEVICES = ("null", "zero", "random", "urandom")  # bound into the jail's /dev by ``launcher._build_jail``


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
