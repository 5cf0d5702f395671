"""Turn what the launcher observed about one run into an outcome: status, reason, detail.

A pure function of the wait status, the captured stdout and stderr tail, the status-descriptor
note and what the launcher itself did to the run. The launcher's own kills win over everything
(a script that exits 0 after our SIGTERM still timed out, and no note can hide a timeout); then
the sandbox's notes, which only setup can write (the script never holds the status descriptor);
then signals; then the exit code and the output. Anything not recognised is a permanent
failure, the safe default.
"""

import os
import signal
from dataclasses import dataclass
from typing import Any

import orjson

from protocol.messages import Limits
from protocol.outcomes import EX_TEMPFAIL, Reason, RunStatus
from workers.sandbox import NOTE_MISSING, NOTE_SETUP

PREVIEW_CHARS = 200  # how much of a bad stdout an error message shows
_DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Outcome:
    """The classified part of a result; timings and rusage are added by the launcher."""

    status: RunStatus
    reason: Reason | None
    exit_code: int | None
    signal: int | None
    output: Any = None
    error: str | None = None


def classify(
    wait_status: int,
    stdout: bytes | bytearray,
    *,
    note: bytes = b"",
    stderr_tail: bytes | bytearray = b"",
    killed: Reason | None = None,
    cpu_used_s: float = 0.0,
    limits: Limits = _DEFAULT_LIMITS,
    timeout_s: float | None = None,
) -> Outcome:
    """Classify one finished run.

    :param wait_status: the raw status from ``os.wait4``.
    :param note: what the child wrote on its status descriptor (see :mod:`workers.sandbox`).
    :param stderr_tail: the end of its stderr: an uncaught ``MemoryError`` is recognised there.
    :param killed: set when the launcher killed the run's group, and why.
    :param cpu_used_s: user + system CPU seconds from the run's rusage.
    """
    code = os.WEXITSTATUS(wait_status) if os.WIFEXITED(wait_status) else None
    sig = os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else None
    kind = note[:1]
    text = note[1:].decode("utf-8", "replace")
    permanent = RunStatus.FAILED_PERMANENT
    retryable = RunStatus.FAILED_RETRYABLE
    if killed is Reason.TIMEOUT:
        how = "SIGKILL after the grace period" if sig == signal.SIGKILL else "SIGTERM"
        error = f"timed out after {timeout_s:g} s; killed with {how}" if timeout_s else "timed out"
        return Outcome(retryable, Reason.TIMEOUT, code, sig, None, error)
    if killed is Reason.OUTPUT_LIMIT:
        error = f"stdout passed the output limit of {limits.output_kb} KiB; killed"
        return Outcome(permanent, Reason.OUTPUT_LIMIT, code, sig, None, error)
    if killed is Reason.SHUTDOWN:
        return Outcome(retryable, Reason.SHUTDOWN, code, sig, None, "killed: the worker stopped")
    if killed is Reason.CANCELLED:
        how = "SIGKILL after the grace period" if sig == signal.SIGKILL else "SIGTERM"
        error = f"cancelled by an operator while running; killed with {how}"
        return Outcome(RunStatus.CANCELLED, Reason.CANCELLED, code, sig, None, error)
    if kind == NOTE_SETUP:
        return Outcome(permanent, Reason.SANDBOX_ERROR, code, sig, None, f"sandbox setup: {text}")
    if kind == NOTE_MISSING:
        return Outcome(permanent, Reason.FILE_MISSING, code, sig, None, text)
    if code == 1 and _last_line(stderr_tail).startswith(b"MemoryError"):
        error = f"MemoryError under the address-space limit of {limits.memory_mb} MiB"
        return Outcome(permanent, Reason.MEMORY_LIMIT, code, sig, None, error)
    if sig is not None:
        return _signalled(sig, cpu_used_s, limits)
    if code == 0:
        ok, value, problem = parse_output(stdout)
        if ok:
            return Outcome(RunStatus.SUCCEEDED, None, 0, None, value, None)
        return Outcome(permanent, Reason.INVALID_OUTPUT, 0, None, None, problem)
    return _failed_exit(code if code is not None else -1, stdout)


def _last_line(tail: bytes | bytearray) -> bytes:
    """The last non-blank line: an uncaught exception's traceback ends with its type."""
    lines = bytes(tail[-4096:]).rstrip().rsplit(b"\n", 1)
    return lines[-1].lstrip()


def _signalled(sig: int, cpu_used_s: float, limits: Limits) -> Outcome:
    name = signal_name(sig)
    permanent = RunStatus.FAILED_PERMANENT
    if sig == signal.SIGXCPU or (
        sig == signal.SIGKILL and limits.cpu_s is not None and cpu_used_s >= limits.cpu_s
    ):
        error = f"CPU time limit of {limits.cpu_s} s exceeded ({name})"
        return Outcome(permanent, Reason.CPU_LIMIT, None, sig, None, error)
    if sig == signal.SIGXFSZ:
        error = f"file size limit of {limits.fsize_mb} MiB exceeded ({name})"
        return Outcome(permanent, Reason.FILE_SIZE_LIMIT, None, sig, None, error)
    if sig == signal.SIGKILL:
        error = "killed by SIGKILL (perhaps out of memory)"
    else:
        error = f"killed by {name}"
    return Outcome(permanent, Reason.SIGNAL, None, sig, None, error)


def _failed_exit(code: int, stdout: bytes | bytearray) -> Outcome:
    ok, value, _ = parse_output(stdout)
    output = value if ok else None
    retryable = code == EX_TEMPFAIL
    error = f"exited with code {code}" + (" (EX_TEMPFAIL)" if retryable else "")
    if isinstance(output, dict):
        retryable = retryable or output.get("retryable") is True
        if isinstance(output.get("error"), str):
            error = output["error"]
    status = RunStatus.FAILED_RETRYABLE if retryable else RunStatus.FAILED_PERMANENT
    return Outcome(status, Reason.EXIT_CODE, code, None, output, error)


def parse_output(stdout: bytes | bytearray) -> tuple[bool, Any, str | None]:
    """``(True, value, None)`` when stdout is exactly one JSON document, else why it is not."""
    if not stdout.strip():
        return False, None, "the script printed nothing on stdout (expected one JSON document)"
    try:
        return True, orjson.loads(stdout), None
    except orjson.JSONDecodeError as exc:
        preview = stdout[:PREVIEW_CHARS].decode("utf-8", "replace")
        more = "..." if len(stdout) > PREVIEW_CHARS else ""
        return (
            False,
            None,
            f"stdout is not one JSON document ({exc}); it starts with {preview!r}{more}",
        )


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"
