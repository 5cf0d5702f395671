"""The worker's side of the sandbox: start a launcher, hand it runs, collect their results.

A worker owns a ZeroMQ context, whose I/O threads make forking unsafe, so it forks a launcher
(:mod:`workers.launcher`) first, before it has any thread, and keeps this handle. The handle is
registered in the worker's poller through :meth:`Launcher.fileno`; :meth:`Launcher.receive`
never blocks. Wire format: :mod:`workers.channel`.

Guarantees: every submitted run yields exactly one :class:`Finished` (normally after its
:class:`Started`; without one when its child could not be forked), unless the launcher dies or
stops answering pings for ``heartbeat_timeout_s`` (stopped, hung), which raises
:class:`LauncherGone` naming the runs it held, after their whole trees were killed: their
process groups, and when every run has a uid of its own, everything running as those uids.
"""

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time

import orjson

from workers import channel
from workers.channel import Finished, Started
from workers.launcher import CHANNEL_FD
from workers.sandbox import SandboxConfig

log = logging.getLogger(__name__)

__all__ = [
    "Finished",
    "Launcher",
    "LauncherGone",
    "SandboxConfig",
    "Started",
    "start_launcher",
]

READY_TIMEOUT_S = 60.0  # pre-importing on a loaded machine can be slow; a dead one is not
PING_INTERVAL_S = 0.5
_RECV = 1 << 18
_RECV_ROUNDS = 16  # bounded, so one receive() cannot be held forever by a chatty launcher


class LauncherGone(Exception):
    """The launcher exited or its channel broke.

    ``in_flight`` names the runs ``(run_id, attempt)`` that had started and not finished; their
    process groups have been sent SIGKILL, so the worker can report them as lost.
    """

    def __init__(self, message: str, in_flight: tuple[tuple[str, int], ...] = ()) -> None:
        super().__init__(message)
        self.in_flight = in_flight


def start_launcher(config: SandboxConfig, *, ready_timeout: float = READY_TIMEOUT_S) -> "Launcher":
    """Start the launcher as a fresh interpreter and wait until it is ready for runs.

    It is spawned, not forked, so the caller may have threads (a ZeroMQ context), and the
    launcher's image -- which every fork-mode run is forked from -- stays small.

    :raises LauncherGone: the launcher died or did not get ready within ``ready_timeout``.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    argv = [
        sys.executable,
        "-I",  # no cwd on sys.path, no PYTHON* variables: it runs as root
        "-m",
        "workers.launcher",
        orjson.dumps(config).decode(),
    ]
    # Every library symbol bound at start-up rather than on first call: a lazy binding done in
    # a forked child writes the global offset table there, a copy-on-write fault per page (and
    # each run's child first calls many functions). Extension modules are dlopen()ed RTLD_NOW
    # anyway. The launcher clears its environment before any run (Sandbox.adopt_process).
    env = {**os.environ, "LD_BIND_NOW": "1"}
    try:
        pid = os.posix_spawn(
            sys.executable,
            argv,
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), CHANNEL_FD)],
        )
    finally:
        theirs.close()
    launcher = Launcher(pid, ours, config)
    launcher._await_ready(ready_timeout)
    return launcher


class Launcher:
    """The worker's handle on its launcher process."""

    def __init__(self, pid: int, sock: socket.socket, config: SandboxConfig) -> None:
        self.pid = pid
        self.forker_pid = 0
        self.preload_failed: tuple[str, ...] = ()  # "module: error" for imports that failed
        self._config = config
        self._ping_at: float | None = None  # monotonic time of the ping not yet answered
        self._next_ping = 0.0
        self._sock = sock
        self._pidfd = os.pidfd_open(pid)
        self._reader = channel.FrameReader()
        self._in_flight: dict[tuple[str, int], int] = {}  # (run_id, attempt) -> child pid
        self._exit_status: int | None = None
        self._closed = False

    def fileno(self) -> int:
        """Readable when events (or the launcher's end) wait; for the worker's poller."""
        return self._sock.fileno()

    def submit(self, run_body: bytes) -> None:
        """Hand over an encoded, already validated :class:`protocol.messages.Run`.

        Blocks only while the socket buffer is full; the launcher always drains it.
        """
        self._send(channel.frame(channel.RUN, run_body))

    def kill_all(self) -> None:
        """TERM every run's group, KILL after ``kill_grace_s``; each still yields a Finished
        (``failed_retryable`` / ``shutdown``)."""
        self._send(channel.frame(channel.KILL_ALL))

    def cancel(self, run_id: str, attempt: int) -> None:
        """TERM that run's group, KILL after ``kill_grace_s``; it still yields a Finished
        (``cancelled``). A run that already ended is ignored by the launcher."""
        self._send(channel.encode_cancel(run_id, attempt))

    def keepalive(self, now: float) -> None:
        """Ping the launcher (and through it the forker), at most one ping at a time.

        :raises LauncherGone: the last ping went unanswered for ``heartbeat_timeout_s``; the
            launcher has been killed (a stopped one too) and its runs' trees with it.
        """
        if self._ping_at is None:
            if now >= self._next_ping:
                self._ping_at = now
                self._next_ping = now + PING_INTERVAL_S
                self._send(channel.frame(channel.PING))
        elif now - self._ping_at > self._config.heartbeat_timeout_s:
            self._kill_launcher()
            raise self._gone(
                f"launcher did not answer a ping for {now - self._ping_at:.1f} s "
                "(stopped or hung); killed"
            )

    def receive(self) -> list[Started | Finished]:
        """Events waiting now, possibly none; never blocks.

        :raises LauncherGone: on EOF or a broken channel (after the events received before it).
        """
        events: list[Started | Finished] = []
        for _ in range(_RECV_ROUNDS):
            try:
                data = self._sock.recv(_RECV, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as exc:
                if events:
                    break  # the error comes back on the next call
                raise self._gone(f"launcher channel broke: {exc}") from exc
            if not data:
                if events:
                    break  # EOF stays readable: the next call raises
                raise self._gone("launcher closed its channel")
            try:
                frames = self._reader.feed(data)
                for kind, payload in frames:
                    if kind == channel.PONG:
                        self._ping_at = None
                    else:
                        events.append(self._track(channel.decode_event(kind, payload)))
            except channel.ChannelError as exc:
                self._kill_launcher()
                raise self._gone(f"launcher sent garbage: {exc}") from exc
        return events

    def close(self, timeout: float = 5.0) -> None:
        """Ask the launcher to kill what is left and exit; SIGKILL it after ``timeout``; reap it."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):  # EOF: the launcher kills every run and exits
            self._sock.shutdown(socket.SHUT_WR)
        if not self._wait(timeout):
            self._kill_launcher()
        self._sock.close()
        os.close(self._pidfd)

    @property
    def exit_status(self) -> int | None:
        """The launcher's wait status once it has been reaped."""
        return self._exit_status

    def __enter__(self) -> "Launcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self._closed:
            raise LauncherGone("launcher handle is closed")
        try:
            self._sock.sendall(data, socket.MSG_NOSIGNAL)
        except OSError as exc:
            raise self._gone(f"launcher channel broke: {exc}") from exc

    def _track(self, event: Started | Finished) -> Started | Finished:
        key = (event.run_id, event.attempt)
        if isinstance(event, Started):
            self._in_flight[key] = event.child_pid
        else:
            self._in_flight.pop(key, None)
        return event

    def _await_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                self._kill_launcher()
                raise self._gone(f"launcher not ready within {timeout:g} s")
            data = self._sock.recv(_RECV)
            if not data:
                raise self._gone("launcher exited during start-up")
            frames = self._reader.feed(data)
            if frames:
                kind, payload = frames[0]
                if kind != channel.READY or len(frames) > 1:
                    self._kill_launcher()
                    raise self._gone(f"launcher sent {chr(kind)!r} before it was ready")
                ready = orjson.loads(payload)
                self.preload_failed = tuple(ready["preload_failed"])
                if self.preload_failed:  # the setting names the module; each line says why
                    log.warning(
                        "launcher %d: preload: %s",
                        self.pid,
                        "; ".join(self.preload_failed),
                        extra={"event": "preload_failed"},
                    )
                self.forker_pid = ready["forker_pid"]
                return

    def _gone(self, why: str) -> LauncherGone:
        """Make the exception for a lost launcher: reap it, kill the groups of its runs."""
        if not self._wait(5.0):
            self._kill_launcher()
        # Safety net for a launcher that was SIGKILLed before it could kill its runs: each run's
        # child leads its own group, and a live group's id cannot be reused.
        for pid in self._in_flight.values():
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        if os.geteuid() == 0:
            for uid in self._config.run_uids:
                _kill_every_process_of(uid)
        lost = tuple(self._in_flight)
        self._in_flight.clear()
        return LauncherGone(f"{why} ({self._describe_exit()})", lost)

    def _wait(self, timeout: float) -> bool:
        """Reap the launcher within ``timeout`` seconds; True once it is reaped."""
        if self._exit_status is not None:
            return True
        if not select.select([self._pidfd], [], [], timeout)[0]:
            return False
        _, status = os.waitpid(self.pid, 0)
        self._exit_status = status
        return True

    def _kill_launcher(self) -> None:
        if self._exit_status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._wait(60.0)
        if self.forker_pid:  # not our child: a stopped one would not see the launcher go
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.forker_pid, signal.SIGKILL)

    def _describe_exit(self) -> str:
        status = self._exit_status
        if status is None:
            return f"launcher {self.pid} still running"
        if os.WIFSIGNALED(status):
            return f"launcher {self.pid} killed by {signal.Signals(os.WTERMSIG(status)).name}"
        return f"launcher {self.pid} exited with status {os.WEXITSTATUS(status)}"


def _kill_every_process_of(uid: int) -> None:
    """SIGKILL everything running as ``uid``, setsid'd descendants included, with no /proc
    scan: a shell switched to that uid calls ``kill(-1)``, which Linux never sends to its
    caller. The worker has threads, so the switch happens in subprocess's exec'ing child."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["/bin/sh", "-c", "kill -9 -1"],
            user=uid, group=uid, extra_groups=[], env={}, cwd="/", timeout=10,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
