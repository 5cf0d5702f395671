"""The launcher process: one single-threaded event loop that runs a child per run.

The worker starts it as a fresh interpreter (``python -I -m workers.launcher``) holding only the
channel, so that the image every run is forked from holds only the sandbox and what scripts
commonly need -- not the worker's ZeroMQ, psutil and multiprocess, nor its descriptors. It
pre-imports those common modules, then forks its pristine forker (:mod:`workers.forker`) before
it ever sees a run: every run's child is forked from there, so a fork-mode script finds nothing
of earlier runs in its memory. The launcher then waits in one ``epoll``: the worker's socket,
the forker's socket, each run's stdout and stderr pipes, SIGTERM/SIGHUP (which only wake it)
through ``signal.set_wakeup_fd``, and deadline timers as the poll timeout. No threads and no sleeps.

Each child is forked one run ahead (a :class:`workers.flight.Spare`): when a run arrives it is
handed to the waiting child at once, and the next one is requested while that run executes, so
the fork's cost stays off every run's critical path. When root with a uid block, each run gets a
free uid of it and a private TMPDIR owned by that uid; both are released when the forker reports
the child reaped. The worker's pings travel through the forker and back, so a pong says both
processes are alive. It never logs: its stderr is the worker's, and it reports through results.
"""

import contextlib
import fcntl
import gc
import heapq
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from typing import Any

import orjson

from protocol.codec import decode
from protocol.errors import ProtocolError
from protocol.messages import Limits, Result, Run
from protocol.outcomes import Reason, RunStatus
from workers import channel
from workers.flight import CHUNK, Flight, Reaped, Spare
from workers.forker import ForkerGone, start_forker
from workers.preload import preload
from workers.sandbox import LAUNCHER_SIGNALS, RUN_FD, Sandbox, SandboxConfig

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_TERM, _KILL = 0, 1  # timer actions
_MAX_FD = 1 << 20


CHANNEL_FD = 3  # where the worker's end of the channel arrives in a fresh launcher


def main() -> None:
    """Entry point of a launcher started by :func:`workers.launcher_handle.start_launcher`.

    argv[1] is the :class:`SandboxConfig` as JSON; the channel to the worker is fd 3.
    """
    fields = orjson.loads(sys.argv[1])
    fields["env_allow"] = tuple(fields["env_allow"])
    fields["preload"] = tuple(fields["preload"])
    fields["run_as"] = tuple(fields["run_as"]) if fields["run_as"] else None
    fields["run_uids"] = tuple(fields["run_uids"])
    status = 70
    try:
        # Off fd 3: the launcher keeps 0-5 for what each child dup2()s into place.
        channel_fd = fcntl.fcntl(CHANNEL_FD, fcntl.F_DUPFD_CLOEXEC, 10)
        # Whatever else the worker leaked to us (its multiprocess sentinel, say) goes: a copy
        # held here would keep the worker's death from being seen.
        os.closerange(CHANNEL_FD, channel_fd)
        os.closerange(channel_fd + 1, _MAX_FD)
        status = serve(SandboxConfig(**fields), socket.socket(fileno=channel_fd))
    except BaseException:
        traceback.print_exc()  # the worker's stderr: the only place a launcher crash can go
    finally:
        os._exit(status)


def serve(config: SandboxConfig, sock: socket.socket) -> int:
    """The launcher's main: serve the worker until it goes away; return the exit status.

    Whatever ends the loop (EOF from the worker, a bug), every run's process tree is killed
    first. Signals do not end it: see :meth:`LauncherLoop._on_wakeup`.
    """
    loop = LauncherLoop(config, sock)
    try:
        loop.run()
    except ForkerGone:
        pass  # the forker killed its children as it went, or they die with their groups below
    finally:
        loop.kill_everything()
    return 0


def _noop(signum: int, frame: Any) -> None:
    """Signals only need to wake the loop; the wakeup fd carries their numbers."""


class LauncherLoop:
    """The launcher's state: flights by child pid, pipes by fd, timers, the worker channel."""

    def __init__(self, config: SandboxConfig, sock: socket.socket) -> None:
        _reset_inherited_signals()
        _occupy_low_fds()
        failed = preload(config.preload)
        self._config = config
        self._sandbox = Sandbox(config, os.environ)
        self._sandbox.adopt_process()
        gc.freeze()  # children's collections skip (and so do not copy) the launcher's objects
        self._forker = start_forker(self._sandbox, uid_sweep=bool(config.run_uids))
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._reader = channel.FrameReader()
        self._pending = bytearray()  # frames the worker has not taken yet
        self._flights: dict[int, Flight] = {}  # by child pid, which is also its pgid and sid
        self._pipes: dict[int, Flight] = {}  # stdout/stderr read end -> its flight
        self._timers: list[tuple[float, int, Flight, int]] = []
        self._spare: Spare | None = None  # forked ahead, waiting for the next run
        self._free_uids = list(reversed(config.run_uids))  # the run's own uids, when root
        self._chown = os.geteuid() == 0 and bool(config.run_uids or config.run_as)
        self._tmp_root = tempfile.mkdtemp(prefix="actor-runs-")  # 0700 until chmod: runs
        os.chmod(self._tmp_root, 0o711)  # may enter it to reach their own folder, not list it
        self._seq = 0
        self._stopping = False
        self._wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in LAUNCHER_SIGNALS:
            signal.signal(sig, _noop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
        sock.setblocking(False)
        self._poll = select.epoll()
        self._poll.register(self._sock_fd, _IN)
        self._poll.register(self._wake_r, _IN)
        self._poll.register(self._forker.fileno(), _IN)
        self._forker.request_spare()
        ready = {"preload_failed": failed, "forker_pid": self._forker.pid}
        self._send(channel.frame(channel.READY, orjson.dumps(ready)))

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        poll = self._poll.poll
        forker_fd = self._forker.fileno()
        while not self._stopping:
            for fd, events in poll(self._timeout()):
                if fd in self._pipes:
                    self._on_pipe(fd)
                elif fd == forker_fd:
                    self._on_forker()
                elif fd == self._wake_r:
                    self._on_wakeup()
                elif fd == self._sock_fd:
                    self._on_socket(events)
                    self._on_forker()  # what arrived while a run waited for its spare
            if self._timers:
                self._fire_timers(time.monotonic())

    def _on_socket(self, events: int) -> None:
        if events & _OUT:
            self._flush()
        if not events & ~_OUT:
            return
        try:
            data = self._sock.recv(CHUNK * 4)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._stopping = True  # the worker died or closed: kill everything and exit
            return
        for kind, payload in self._reader.feed(data):
            if kind == channel.RUN:
                self._start(payload)
            elif kind == channel.KILL_ALL:
                self._kill_all()
            elif kind == channel.CANCEL:
                self._cancel(*channel.decode_cancel(payload))
            elif kind == channel.PING:
                self._forker.ping()
            else:
                raise channel.ChannelError(f"unexpected frame kind {kind!r} from the worker")

    def _on_pipe(self, fd: int) -> None:
        flight = self._pipes[fd]
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        if fd == flight.out_fd:
            if not data:
                self._close_stdout(flight)  # closed early; the run goes on
            elif flight.take_stdout(data):
                self._kill(flight, Reason.OUTPUT_LIMIT, signal.SIGKILL)
                self._close_stdout(flight)
        elif data:
            flight.take_stderr(data)
        else:
            self._unwatch(fd)
            os.close(fd)
            flight.err_fd = -1

    def _on_wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 512)
        # SIGTERM and SIGHUP only wake the loop. They reach the launcher when the whole
        # process group or cgroup is signalled (a shell's Ctrl-C or hang-up, timeout(1),
        # systemd's KillMode=control-group): shutdown is the supervisor's to run, with its
        # grace period, and it ends here through the worker's channel (EOF).

    def _on_forker(self) -> None:
        for event in self._forker.events():
            if isinstance(event, Reaped):
                self._on_reaped(event)
            elif isinstance(event, Spare):
                if self._spare is not None or self._stopping:
                    event.retire()
                else:
                    self._spare = event
            elif event is None:
                self._send(channel.frame(channel.PONG))
            # a string: the forker could not fork; the next run asks again, on demand

    def _on_reaped(self, reaped: Reaped) -> None:
        flight = self._flights.pop(reaped.pid, None)
        if flight is not None:
            self._finish(flight, reaped)
        elif self._spare is not None and reaped.pid == self._spare.pid:
            self._spare.retire()  # killed while waiting; a new one is forked on demand
            self._spare = None
            self._refill_spare()

    # --- runs ---------------------------------------------------------------------------------

    def _start(self, body: bytes) -> None:
        try:
            run = decode(body, expected=("run",))
        except ProtocolError as exc:
            self._reject_undecodable(body, exc)
            return
        assert isinstance(run, Run)
        try:
            flight = self._launch(run)
        except OSError as exc:  # EAGAIN, EMFILE, ENOMEM: this run fails, the launcher goes on
            self._send_failure(run, Reason.SANDBOX_ERROR, f"could not start the child: {exc}")
            return
        self._flights[flight.pid] = flight
        for fd in (flight.out_fd, flight.err_fd):
            self._pipes[fd] = flight
            self._poll.register(fd, _IN)
        self._send(channel.encode_started(run.run_id, run.attempt, flight.pid, flight.started_at))
        self._add_timer(flight.t0 + run.timeout_s, flight, _TERM)
        self._refill_spare()  # now, while the run executes, rather than when the next arrives

    def _launch(self, run: Run) -> Flight:
        """Give the run a uid and a TMPDIR, and hand it to the waiting spare (or, if it died
        waiting or there is none, to one forked now).

        :raises OSError: no uid free, no TMPDIR, or no child could be forked.
        """
        if self._config.run_uids and not self._free_uids:
            raise OSError(f"all {len(self._config.run_uids)} uids of this launcher are in use")
        uid = self._free_uids.pop() if self._config.run_uids else None
        self._seq += 1
        tmpdir = f"{self._tmp_root}/{self._seq}"
        try:
            order = self._sandbox.order(run, uid, tmpdir)
            # A run whose TMPDIR is in its own tmpfs never uses the real folder: none is made.
            made = "" if order.tmp_inside else self._make_tmpdir(tmpdir, uid)
        except OSError:
            self._release(uid, "")
            raise
        for _ in range(2):
            spare, self._spare = self._spare, None
            try:
                if spare is None:
                    spare = self._forker.wait_spare()
                flight = spare.launch(run, order)
                flight.tmpdir = made
                return flight
            except OSError as exc:
                if spare is not None:
                    spare.retire()  # it died waiting; the forker reaps it
                error = exc
        self._release(uid, made)
        raise error

    def _make_tmpdir(self, path: str, uid: int | None) -> str:
        """A private TMPDIR (0700), owned by the run's user when we switch to one. Its name is
        taken in our own folder, which nobody else can write, so no run can squat it."""
        os.mkdir(path, 0o700)
        owner = (uid, uid) if uid is not None else self._config.run_as
        if self._chown and owner is not None:
            os.chown(path, *owner)
        return path

    def _release(self, uid: int | None, tmpdir: str) -> None:
        if tmpdir:
            try:
                os.rmdir(tmpdir)  # usually empty: one syscall
            except OSError:
                shutil.rmtree(tmpdir, ignore_errors=True)  # fd-based: symlinks cannot redirect it
        if uid is not None:
            self._free_uids.append(uid)

    def _refill_spare(self) -> None:
        if self._spare is None and not self._stopping:
            self._forker.request_spare()

    def _kill(self, flight: Flight, why: Reason, sig: int) -> None:
        """Signal a run's whole group; the first reason given is the one recorded."""
        if flight.killed is None:
            flight.killed = why
        _signal_group(flight.pid, sig)
        if sig != signal.SIGKILL:
            self._add_timer(time.monotonic() + self._config.kill_grace_s, flight, _KILL)

    def _kill_all(self) -> None:
        for flight in self._flights.values():
            if flight.killed is None:
                self._kill(flight, Reason.SHUTDOWN, signal.SIGTERM)

    def _cancel(self, run_id: str, attempt: int) -> None:
        """An operator's cancel: the run's group gets TERM, then KILL after the grace."""
        for flight in self._flights.values():
            if flight.run.run_id == run_id and flight.run.attempt == attempt:
                if flight.killed is None:
                    self._kill(flight, Reason.CANCELLED, signal.SIGTERM)
                return

    def _close_stdout(self, flight: Flight) -> None:
        self._unwatch(flight.out_fd)
        os.close(flight.out_fd)
        flight.out_fd = -1

    def _unwatch(self, fd: int) -> None:
        del self._pipes[fd]
        self._poll.unregister(fd)

    def _finish(self, flight: Flight, reaped: Reaped) -> None:
        for fd in (flight.out_fd, flight.err_fd):
            if fd >= 0:
                self._unwatch(fd)
        note = flight.drain()
        body, succeeded = flight.result(self._config.worker_id, reaped, note)
        flight.close()
        self._release(flight.uid, flight.tmpdir)
        run = flight.run
        self._send(channel.encode_finished(run.run_id, run.attempt, body, succeeded=succeeded))

    def _send_failure(self, run: Run, reason: Reason, error: str) -> None:
        now = time.time()
        result = Result(
            run_id=run.run_id, attempt=run.attempt, worker_id=self._config.worker_id,
            status=RunStatus.FAILED_PERMANENT.value, reason=reason.value, error=error,
            started_at=now, finished_at=now,
        )  # fmt: skip
        body = orjson.dumps(result)
        self._send(channel.encode_finished(run.run_id, run.attempt, body, succeeded=False))

    def _reject_undecodable(self, body: bytes, exc: ProtocolError) -> None:
        """The worker validates runs, so this is a bug; answer it if the run can be named."""
        try:
            obj = orjson.loads(body)
            run_id, attempt = obj["run_id"], obj["attempt"]
        except (orjson.JSONDecodeError, TypeError, KeyError) as bad:
            raise channel.ChannelError(f"undecodable run from the worker: {exc}") from bad
        if not isinstance(run_id, str) or not run_id or not isinstance(attempt, int) or attempt < 1:
            raise channel.ChannelError(f"undecodable run from the worker: {exc}") from exc
        stub = Run(
            run_id=run_id, attempt=attempt, actor="?", script="?", cwd="?", mode="fork",
            input_json="", env={}, limits=Limits(),
            timeout_s=1.0, code_sha256="",
        )  # fmt: skip
        self._send_failure(stub, Reason.SANDBOX_ERROR, f"launcher could not decode the run: {exc}")

    def kill_everything(self) -> None:
        """SIGKILL every run's tree; the forker, told by our closing its socket, reaps them and
        everything else it has, and exits."""
        for pid in self._flights:
            _signal_group(pid, signal.SIGKILL)
        if self._spare is not None:
            self._spare.retire()
            self._spare = None
        self._forker.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self._forker.pid, 0)
        self._flights.clear()
        shutil.rmtree(self._tmp_root, ignore_errors=True)

    # --- timers and the worker channel --------------------------------------------------------

    def _add_timer(self, when: float, flight: Flight, action: int) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, flight, action))
        if len(self._timers) > 2 * len(self._flights) + 64:
            # Entries of finished runs are dropped lazily; rebuild before they pile up.
            live = self._flights
            self._timers = [t for t in self._timers if live.get(t[2].pid) is t[2]]
            heapq.heapify(self._timers)

    def _timeout(self) -> float:
        """Seconds until the next live timer (-1: none); stale entries are dropped here."""
        timers = self._timers
        while timers and self._flights.get(timers[0][2].pid) is not timers[0][2]:
            heapq.heappop(timers)
        if not timers:
            return -1
        return max(0.0, timers[0][0] - time.monotonic())

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, flight, action = heapq.heappop(timers)
            if self._flights.get(flight.pid) is not flight:
                continue  # finished before its deadline
            if action == _KILL:
                _signal_group(flight.pid, signal.SIGKILL)
            elif flight.killed is None:
                self._kill(flight, Reason.TIMEOUT, signal.SIGTERM)

    def _send(self, data: bytes) -> None:
        """Queue a frame for the worker; the launcher never blocks on a slow reader."""
        if self._pending:
            self._pending += data
            return
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._stopping = True  # the worker is gone
            return
        if sent < len(data):
            self._pending += data[sent:]
            self._poll.modify(self._sock_fd, _IN | _OUT)

    def _flush(self) -> None:
        try:
            sent = self._sock.send(self._pending)
        except BlockingIOError:
            return
        except OSError:
            self._stopping = True
            return
        del self._pending[:sent]
        if not self._pending:
            self._poll.modify(self._sock_fd, _IN)


# --- process set-up and helpers -------------------------------------------------------------


def _reset_inherited_signals() -> None:
    """Forget the worker's handlers and ignored signals, so a child only has to undo ours."""
    keep = {signal.SIGKILL, signal.SIGSTOP, signal.SIGPIPE, signal.SIGXFSZ}  # the last two are
    # ignored by every interpreter at start-up, so a fresh one would have them ignored too
    for sig in signal.valid_signals():
        if sig in keep:
            continue
        try:
            if signal.getsignal(sig) is not signal.SIG_DFL:
                signal.signal(sig, signal.SIG_DFL)
        except (ValueError, OSError):
            continue  # signals the C library reserves
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _occupy_low_fds() -> None:
    """Keep fds 0-5 taken so every per-run descriptor is >= 6 and a child's dup2 onto 0-5
    never clobbers a source it still needs."""
    for fd in range(RUN_FD + 1):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this very fd


def _signal_group(pid: int, sig: int) -> None:
    """Signal a run's process group; before the child's setsid there is only the child."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


if __name__ == "__main__":
    main()
