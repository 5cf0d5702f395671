"""A run's child: forked ahead as a :class:`Spare`, then in flight, then a result once reaped.

The launcher's loop owns the timing; the forker (:mod:`workers.forker`) owns the reaping; these
objects own a child's descriptors and buffers. The run (and so its input) reaches the child
through a ``memfd``, which never blocks the launcher whatever its size; the child copies the
input into its own stdin memfd.
stdout and stderr are non-blocking pipes the loop reads; the status pipe (fd 3 in the child) is
only read once the child is gone, and at most :data:`NOTE_MAX` bytes of it.

:meth:`Flight.result` always returns a body the protocol accepts, whatever the script printed:
stdout that orjson parsed but cannot encode again (nesting deeper than 254 levels) is
``invalid_output``, and a result past :data:`protocol.codec.MAX_BODY_BYTES` is ``output_limit``.
"""

import contextlib
import dataclasses
import os
import time
from typing import NamedTuple

import orjson

from protocol.codec import MAX_BODY_BYTES, encode
from protocol.fields import MAX_TEXT
from protocol.messages import Result, Run, Rusage
from protocol.outcomes import Reason, RunStatus
from workers.atfork import fork_without_hooks
from workers.classify import classify
from workers.sandbox import EXIT_SANDBOX, NOTE_MAX, Order, Sandbox, split_code_note

CHUNK = 1 << 16  # one pipe buffer's worth per read
DRAIN_MAX_READS = 16  # after exit, read at most this many chunks per pipe (a killed writer is
# gone; an escaped one must not keep the loop here)
_PIPE_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC
_MAX_RESULT_BYTES = MAX_BODY_BYTES - 4096  # room for the finished frame around it


class Reaped(NamedTuple):
    """A child the forker reaped: its wait status and rusage."""

    pid: int
    status: int
    utime_s: float
    stime_s: float
    maxrss_kb: int


class Flight:
    """A run's child, from its handoff to its result."""

    __slots__ = (
        "err", "err_cap", "err_fd", "killed", "note_fd", "out", "out_cap", "out_fd", "pid",
        "run", "started_at", "t0", "tmpdir", "uid",
    )  # fmt: skip

    def __init__(self, run: Run, pid: int, out_fd: int, err_fd: int, note_fd: int) -> None:
        self.run = run
        self.uid: int | None = None  # the run's own uid, back to the launcher's pool when reaped
        self.tmpdir = ""  # its private TMPDIR if the launcher made one, removed when reaped
        self.pid = pid
        self.out_fd = out_fd
        self.err_fd = err_fd
        self.note_fd = note_fd
        self.out = bytearray()
        self.err = bytearray()
        self.out_cap = run.limits.output_kb << 10
        self.err_cap = min(run.limits.stderr_kb << 10, MAX_TEXT)
        self.t0 = 0.0  # monotonic, at handoff (the child was forked just before, off the clock)
        self.started_at = 0.0  # epoch, at handoff
        self.killed: Reason | None = None

    def take_stdout(self, data: bytes) -> bool:
        """Keep a chunk of stdout; True once it passed the output limit."""
        self.out += data
        return len(self.out) > self.out_cap

    def take_stderr(self, data: bytes) -> None:
        """Keep the tail of stderr only; trimmed in batches so a flood costs O(bytes)."""
        err = self.err
        err += data
        if len(err) > 2 * self.err_cap + CHUNK:
            del err[: len(err) - self.err_cap]

    def drain(self) -> bytes:
        """Read what the (now dead) child left in its pipes; return the status-fd note."""
        if self.out_fd >= 0:
            for data in _drain(self.out_fd):
                if self.take_stdout(data):
                    self.killed = self.killed or Reason.OUTPUT_LIMIT
                    break
        if self.err_fd >= 0:
            for data in _drain(self.err_fd):
                self.take_stderr(data)
        try:
            return os.read(self.note_fd, NOTE_MAX)  # a setup note is written once, before exit
        except BlockingIOError:
            return b""

    def result(
        self, worker_id: str, reaped: Reaped, note: bytes, *, max_bytes: int = _MAX_RESULT_BYTES
    ) -> tuple[bytes, bool]:
        """The encoded Result of this run, given how it ended, and whether the run succeeded
        (so that nobody has to decode the result again to count failures).

        The body always decodes on the other side, and is at most ``max_bytes``: see the
        module's docstring.
        """
        run = self.run
        tail = bytes(self.err[-self.err_cap :]) if self.err_cap else b""
        ran_sha256, note = split_code_note(note)
        outcome = classify(
            reaped.status, self.out, note=note, stderr_tail=tail, killed=self.killed,
            cpu_used_s=reaped.utime_s + reaped.stime_s, limits=run.limits,
            timeout_s=run.timeout_s,
        )  # fmt: skip
        result = Result(
            run_id=run.run_id,
            attempt=run.attempt,
            worker_id=worker_id,
            status=outcome.status.value,
            reason=outcome.reason.value if outcome.reason is not None else None,
            exit_code=outcome.exit_code,
            signal=outcome.signal,
            output=outcome.output,
            stderr_tail=tail.decode("utf-8", "replace"),
            error=outcome.error[:MAX_TEXT] if outcome.error is not None else None,
            duration_ms=(time.monotonic() - self.t0) * 1000.0,
            started_at=self.started_at,
            finished_at=time.time(),
            child_pid=self.pid,
            rusage=Rusage(
                utime_s=reaped.utime_s, stime_s=reaped.stime_s, maxrss_kb=reaped.maxrss_kb
            ),
            code_sha256=ran_sha256,
        )
        try:
            body = encode(result)
        except orjson.JSONEncodeError as exc:
            why = f"stdout is JSON that cannot be passed on (nested too deeply?): {exc}"
            result = _without_output(result, Reason.INVALID_OUTPUT, why)
            body = encode(result)
        if len(body) > max_bytes:
            why = f"the result ({len(body)} bytes) would exceed the protocol's {max_bytes}"
            result = _without_output(result, Reason.OUTPUT_LIMIT, why)
            body = encode(result)
        return body, result.status == RunStatus.SUCCEEDED.value

    def close(self) -> None:
        for fd in (self.out_fd, self.err_fd, self.note_fd):
            if fd >= 0:
                os.close(fd)
        self.out_fd = self.err_fd = self.note_fd = -1


class Spare:
    """A child forked ahead of its run: detached, descriptors in place, waiting on its go pipe.

    Forking costs a Python process about a millisecond (page tables, then copy-on-write faults
    on both sides), so the launcher keeps one spare ready and forks the next right after handing
    a run over, while that run executes: the fork is off every run's critical path.
    """

    __slots__ = ("err_fd", "go_fd", "note_fd", "out_fd", "pid", "run_fd")

    def __init__(
        self, pid: int, out_fd: int, err_fd: int, note_fd: int, go_fd: int, run_fd: int
    ) -> None:
        self.pid = pid
        self.out_fd = out_fd
        self.err_fd = err_fd
        self.note_fd = note_fd
        self.go_fd = go_fd
        self.run_fd = run_fd

    def launch(self, run: Run, order: Order) -> Flight:
        """Hand a run over (as its :class:`Order`, through the run memfd: never blocking).

        :raises OSError: the spare is gone (it died waiting); the caller retires it.
        """
        data = order.dumps()
        view = memoryview(data)
        written = 0
        while written < len(data):
            written += os.pwrite(self.run_fd, view[written:], written)
        started_at = time.time()
        t0 = time.monotonic()
        os.write(self.go_fd, b"\x01")
        os.close(self.go_fd)
        os.close(self.run_fd)
        flight = Flight(run, self.pid, self.out_fd, self.err_fd, self.note_fd)
        flight.t0 = t0
        flight.started_at = started_at
        flight.uid = order.uid
        return flight

    def retire(self) -> None:
        """Close our ends; an idle spare sees EOF on its go pipe and exits."""
        for fd in (self.out_fd, self.err_fd, self.note_fd, self.go_fd, self.run_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def fork_spare(sandbox: Sandbox, *, without_hooks: bool = False) -> Spare:
    """Fork a child that detaches and waits for its run; it never comes back.

    ``without_hooks``: fork as :func:`workers.atfork.fork_without_hooks` does (the caller has
    one thread); a fork-mode run then catches up on what it needs.

    :raises OSError: when descriptors or the fork itself are not available; nothing leaks.
    """
    parent_fds: list[int] = []
    child_fds: list[int] = []
    try:
        child_fds.append(os.memfd_create("actor-input", os.MFD_CLOEXEC))
        for _ in range(3):
            r, w = os.pipe2(_PIPE_FLAGS)
            parent_fds.append(r)
            child_fds.append(w)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)  # blocking: the child sleeps in read()
        child_fds.append(go_r)
        parent_fds.append(go_w)
        run_fd = os.memfd_create("actor-run", os.MFD_CLOEXEC)  # written by us, read by it
        parent_fds.append(run_fd)
        stdin, out_w, err_w, note_w, go = child_fds
        pid = fork_without_hooks() if without_hooks else os.fork()
        if pid == 0:
            try:
                sandbox.wait_and_run(
                    stdin, out_w, err_w, note_w, go, run_fd, owes_hooks=without_hooks
                )
            finally:
                os._exit(EXIT_SANDBOX)
    except BaseException:
        for fd in parent_fds:
            os.close(fd)
        raise
    finally:
        for fd in child_fds:
            os.close(fd)
    out_r, err_r, note_r, go_w, run_fd = parent_fds
    return Spare(pid, out_r, err_r, note_r, go_w, run_fd)


def _without_output(result: Result, reason: Reason, why: str) -> Result:
    """The result with its output dropped and the reason said; it fits by construction (the
    stderr tail and the error are each capped at MAX_TEXT, far below MAX_BODY_BYTES). A run
    that failed anyway keeps its status and reason."""
    if result.status == RunStatus.SUCCEEDED.value:
        return dataclasses.replace(
            result, status=RunStatus.FAILED_PERMANENT.value, reason=reason.value, error=why,
            output=None,
        )  # fmt: skip
    return dataclasses.replace(result, error=f"{result.error}; {why}"[:MAX_TEXT], output=None)


def _drain(fd: int) -> list[bytes]:
    chunks: list[bytes] = []
    for _ in range(DRAIN_MAX_READS):
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            break
        if not data:
            break
        chunks.append(data)
    return chunks
