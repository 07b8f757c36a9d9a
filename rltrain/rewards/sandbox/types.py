"""What crosses the sandbox's boundary: ``Limits`` and ``Job`` in, ``ProgramRun`` and its
``TestRun``s out, and the errors that mean the sandbox itself (not the program) failed.

The jail side receives ``Limits`` as the dict of its fields (``dataclasses.asdict``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

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
        output: stdout (stdin/stdout programs) or the JSON of the return value (call-based
            programs), as the raw bytes the program wrote; ``None`` unless ``status == "ok"``.
            ``text`` decodes it (UTF-8, invalid bytes replaced): 4 bytes a character once one
            wide character is in it, so judges compare the bytes.
        error: a one-line reason for a non-ok status.
        seconds: wall-clock time of the test.
        truncated: the output went past what was left of the program's ``output_mb``.
    """

    status: str
    output: bytes | None = None
    error: str | None = None
    seconds: float = 0.0
    truncated: bool = False

    @property
    def text(self) -> str | None:
        """``output`` decoded as UTF-8 (invalid bytes replaced), or None."""
        return None if self.output is None else self.output.decode("utf-8", "replace")



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
