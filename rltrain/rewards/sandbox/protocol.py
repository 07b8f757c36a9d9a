"""The wire from the jail back to the training process: the statuses of a test, and the event
stream that carries them.

The harness writes one event per line, a JSON header that may be followed by ``nbytes`` raw
bytes of output (``_emit``, in the jail); the training process reads at most a capped number
of bytes of that stream (``pool.Sandbox._run_one``) and decodes it (``_parse_run``). Anything
that is not an event line is the launcher's or harness's stderr.
"""
from __future__ import annotations

import json
import os

from .types import ProgramRun, SandboxError, TestRun

STATUS_OK = "ok"  # ran to completion; ``output`` holds what it produced (bytes)
STATUS_RUNTIME_ERROR = "runtime_error"  # exception, non-zero exit, killed by a signal or a limit
STATUS_TIMEOUT = "timeout"  # CPU or wall-clock limit of the test (or of the program) reached
STATUS_SKIPPED = "skipped"  # not run: an earlier test failed and ``stop_on_error`` was set


def _emit(event: dict, payload: bytes = b"") -> None:
    """One event: a JSON header line, then ``payload`` raw (its length is in the header)."""
    event["nbytes"] = len(payload)
    data = (json.dumps(event) + "\n").encode() + payload
    while data:
        data = data[os.write(1, data):]


def _parse_run(out: bytes | bytearray, n_tests: int, killed: bool) -> ProgramRun:
    """Decode the harness's stream: JSON header lines, each followed by ``nbytes`` raw bytes of
    output; any other line is the launcher's or harness's stderr.

    Outputs stay bytes (decoding is the judge's business, and costs up to 4 bytes a character).
    Once the harness said ``ready`` (the jail is built and the program compiled), everything
    that goes wrong is the program's doing: a test the harness never reported is a runtime
    error of the program. Before ``ready`` it is a failure of the sandbox (``SandboxError``).
    """
    compile_error = None
    other: list[str] = []
    tests: dict[int, TestRun] = {}
    done = ready = False
    total = 0
    pos = 0
    view = memoryview(out)
    while pos < len(out):
        end = out.find(b"\n", pos)
        if end < 0:
            end = len(out)
        short = end - pos < 65536  # an event line is short; anything longer is not one
        line = bytes(view[pos:min(end, pos + 65536)])
        pos = end + 1
        try:
            event = json.loads(line) if short and line.startswith(b"{") else None
        except (ValueError, RecursionError):
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("nbytes", 0), int):
            other.append(line[:300].decode("utf-8", "replace"))  # stderr text, or a partial last line
            continue
        nbytes = max(0, event.get("nbytes", 0))
        payload = bytes(view[pos:pos + nbytes])
        pos += nbytes
        kind = event.get("event")
        if kind == "setup_error":
            raise SandboxError(f"sandbox setup failed: {event.get('error')}")
        if kind == "compile_error":
            compile_error = str(event.get("error"))
        elif kind == "ready":
            ready = True
        elif kind == "test" and isinstance(event.get("index"), int) and len(payload) == nbytes:
            status = event.get("status")
            total += nbytes
            tests[event["index"]] = TestRun(
                status, payload if status == STATUS_OK else None, event.get("error"),
                float(event.get("seconds", 0.0)), bool(event.get("truncated")),
            )
        elif kind == "done":
            done = True
    view.release()
    if compile_error is not None:
        return ProgramRun(compile_error, [])
    if not ready and not killed and (other or not done):
        # The launcher or harness failed before the program ran: a sandbox failure.
        raise SandboxError("sandbox harness failed: " + (" | ".join(other[-3:]) or "no output"))
    if killed:
        missing = TestRun(STATUS_TIMEOUT, error="program time limit")
    else:
        reason = next((line for line in reversed(other) if line.strip()), "")
        missing = TestRun(STATUS_RUNTIME_ERROR, error=("harness died before reporting this test: " + reason)[:300])
    return ProgramRun(None, [tests.get(i, missing) for i in range(n_tests)], total)
