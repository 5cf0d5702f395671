"""The launcher process: one single-threaded event loop that forks a child per run.

The worker starts it as a fresh interpreter (``python -I -m workers.zygote``), so that the image
every run is forked from holds only the sandbox and what scripts commonly need -- not the
worker's ZeroMQ, psutil and multiprocess, which would make each fork dearer. It pre-imports
those common modules and then waits in one ``epoll``: the worker's socket, each run's stdout
and stderr pipes, SIGCHLD (SIGTERM/SIGHUP only wake it) through ``signal.set_wakeup_fd``, and
deadline timers as the poll timeout. No threads and no sleeps.

Each child is forked one run ahead (a :class:`workers.flight.Spare`): when a run arrives it is
handed to the waiting child at once, and the next one is forked while that run executes, so the
fork's cost (about a millisecond for a Python process) stays off every run's critical path.

Reaping has one owner, :meth:`Zygote._reap`. The launcher is a child subreaper, so descendants
that escape a run's process group with ``setsid`` are reparented to it when their parent dies;
after each exit it reads its own children list (one small /proc file) and kills those that no
run in flight claims. It never logs: its stderr is the worker's, and it reports through results.
"""

import contextlib
import ctypes
import errno
import fcntl
import gc
import heapq
import importlib
import os
import resource
import select
import signal
import socket
import sys
import time
import traceback
from typing import Any

import orjson

from protocol.codec import decode
from protocol.errors import ProtocolError
from protocol.messages import Limits, Result, Run
from protocol.outcomes import Reason, Status
from workers import channel
from workers.classify import Kill
from workers.flight import CHUNK, Flight, Spare, fork_spare
from workers.sandbox import LAUNCHER_SIGNALS, RUN_FD, Sandbox, SandboxConfig

PR_SET_CHILD_SUBREAPER = 36
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_TERM, _KILL = 0, 1  # timer actions
_RUN_ID_KEY = b"ACTOR_RUN_ID="


CHANNEL_FD = 3  # where the worker's end of the channel arrives in a fresh launcher


def main() -> None:
    """Entry point of a launcher started by :func:`workers.launcher.start_launcher`.

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
        os.close(CHANNEL_FD)
        status = serve(SandboxConfig(**fields), socket.socket(fileno=channel_fd))
    except BaseException:
        traceback.print_exc()  # the worker's stderr: the only place a launcher crash can go
    finally:
        os._exit(status)


def serve(config: SandboxConfig, sock: socket.socket) -> int:
    """The launcher's main: serve the worker until it goes away; return the exit status.

    Whatever ends the loop (EOF from the worker, a bug), every run's process tree is killed
    first. Signals do not end it: see :meth:`Zygote._on_wakeup`.
    """
    zygote = Zygote(config, sock)
    try:
        zygote.run()
    finally:
        zygote.kill_everything()
    return 0


def _noop(signum: int, frame: Any) -> None:
    """Signals only need to wake the loop; the wakeup fd carries their numbers."""


class Zygote:
    """The launcher's state: flights by child pid, pipes by fd, timers, the worker channel."""

    def __init__(self, config: SandboxConfig, sock: socket.socket) -> None:
        _become_subreaper()
        _reset_inherited_signals()
        _occupy_low_fds()
        failed = _preload(config.preload)
        self._config = config
        self._sandbox = Sandbox(config, os.environ)
        self._sandbox.adopt_process()
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._reader = channel.FrameReader()
        self._pending = bytearray()  # frames the worker has not taken yet
        self._flights: dict[int, Flight] = {}  # by child pid, which is also its pgid and sid
        self._pipes: dict[int, Flight] = {}  # stdout/stderr read end -> its flight
        self._timers: list[tuple[float, int, Flight, int]] = []
        self._spare: Spare | None = None  # forked ahead, waiting for the next run
        self._seq = 0
        self._stopping = False
        pid = os.getpid()
        self._children_path = f"/proc/{pid}/task/{pid}/children"
        self._has_children_file = os.path.exists(self._children_path)
        self._wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in LAUNCHER_SIGNALS:
            signal.signal(sig, _noop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
        sock.setblocking(False)
        self._poll = select.epoll()
        self._poll.register(self._sock_fd, _IN)
        self._poll.register(self._wake_r, _IN)
        gc.freeze()  # children's collections skip (and so do not copy) the launcher's objects
        self._refill_spare()
        self._send(channel.frame(channel.READY, orjson.dumps({"preload_failed": failed})))

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        poll = self._poll.poll
        while not self._stopping:
            for fd, events in poll(self._timeout()):
                if fd in self._pipes:
                    self._on_pipe(fd)
                elif fd == self._wake_r:
                    self._on_wakeup()
                elif fd == self._sock_fd:
                    self._on_socket(events)
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
                self._kill(flight, Kill.OUTPUT_LIMIT, signal.SIGKILL)
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
        self._reap()

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
        """Hand the run to the waiting spare, or to a new one if it died waiting (or is none)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            try:
                return spare.launch(run)
            except OSError:
                spare.retire()  # it died waiting; its zombie is reaped as an orphan
        fresh = fork_spare(self._sandbox)
        try:
            return fresh.launch(run)
        except OSError:
            fresh.retire()
            raise

    def _refill_spare(self) -> None:
        if self._spare is None and not self._stopping:
            try:
                self._spare = fork_spare(self._sandbox)
            except OSError:
                self._spare = None  # out of processes or fds: the next run forks on demand

    def _kill(self, flight: Flight, why: Kill, sig: int) -> None:
        """Signal a run's whole group; the first reason given is the one recorded."""
        if flight.killed is None:
            flight.killed = why
        _signal_group(flight.pid, sig)
        if sig != signal.SIGKILL:
            self._add_timer(time.monotonic() + self._config.kill_grace_s, flight, _KILL)

    def _kill_all(self) -> None:
        for flight in self._flights.values():
            if flight.killed is None:
                self._kill(flight, Kill.SHUTDOWN, signal.SIGTERM)

    def _close_stdout(self, flight: Flight) -> None:
        self._unwatch(flight.out_fd)
        os.close(flight.out_fd)
        flight.out_fd = -1

    def _unwatch(self, fd: int) -> None:
        del self._pipes[fd]
        self._poll.unregister(fd)

    def _finish(self, flight: Flight, status: int, ru: resource.struct_rusage) -> None:
        for fd in (flight.out_fd, flight.err_fd):
            if fd >= 0:
                self._unwatch(fd)
        note = flight.drain()
        body, succeeded = flight.result(self._config.worker_id, status, ru, note)
        flight.close()
        run = flight.run
        self._send(channel.encode_finished(run.run_id, run.attempt, body, succeeded=succeeded))

    def _send_failure(self, run: Run, reason: Reason, error: str) -> None:
        now = time.time()
        result = Result(
            run_id=run.run_id, attempt=run.attempt, worker_id=self._config.worker_id,
            status=Status.FAILED_PERMANENT.value, reason=reason.value, error=error,
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

    # --- reaping ------------------------------------------------------------------------------

    def _reap(self) -> None:
        """Reap every zombie; a run's group is killed while its leader's zombie still holds the
        pgid, so a grandchild that outlived the script dies with it."""
        exited = False
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break
            if info is None:
                break
            pid = info.si_pid
            flight = self._flights.pop(pid, None)
            if flight is not None:
                _signal_group(pid, signal.SIGKILL)
            _, status, ru = os.wait4(pid, 0)
            exited = True
            if flight is not None:
                self._finish(flight, status, ru)
            elif self._spare is not None and pid == self._spare.pid:
                self._spare.retire()  # killed while waiting; a new one is forked on demand
                self._spare = None
        if exited:
            self._sweep_orphans()

    def _sweep_orphans(self) -> None:
        """Kill reparented descendants that no run in flight claims.

        A process still in a live run's session belongs to it; so does one whose environment
        names a live run (exec-mode descendants that called setsid). Everything else is left
        over from a finished run. Killing one reparents its children here in turn, and its death
        brings us back through :meth:`_reap`, so whole escaped trees converge.
        """
        live_ids: set[str] | None = None
        spare = self._spare.pid if self._spare is not None else 0
        for pid in self._children():
            if pid in self._flights or pid == spare:
                continue
            try:
                if os.getsid(pid) in self._flights:
                    continue
            except ProcessLookupError:
                continue
            if live_ids is None:
                live_ids = {f.run.run_id for f in self._flights.values()}
            if live_ids and _run_id_of(pid) in live_ids:
                continue
            _kill_quietly(pid)

    def _children(self) -> list[int]:
        """Our direct children, zombies included: one small /proc read in the common case."""
        if not self._has_children_file:
            return _children_by_scan(os.getpid())
        fd = os.open(self._children_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = b""
            while chunk := os.read(fd, CHUNK):
                data += chunk
        finally:
            os.close(fd)
        return [int(p) for p in data.split()]

    def kill_everything(self) -> None:
        """SIGKILL every run's tree and every other descendant, and reap them all."""
        for pid in self._flights:
            _signal_group(pid, signal.SIGKILL)
        if self._spare is not None:
            self._spare.retire()
            self._spare = None
        while True:
            for pid in self._children():
                _kill_quietly(pid)
            try:
                os.wait4(-1, 0)
            except ChildProcessError:
                break
        self._flights.clear()

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
                self._kill(flight, Kill.TIMEOUT, signal.SIGTERM)

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


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


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


def _preload(modules: tuple[str, ...]) -> list[str]:
    """Import what scripts commonly need; return ``"name: error"`` for those that failed."""
    failed: list[str] = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            failed.append(f"{name}: {exc}")
    return failed


def _signal_group(pid: int, sig: int) -> None:
    """Signal a run's process group; before the child's setsid there is only the child."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _kill_quietly(pid: int) -> None:
    """SIGKILL a stray process and the group it leads (after setsid, its own tree)."""
    for kill in (os.kill, os.killpg):
        try:
            kill(pid, signal.SIGKILL)
        except OSError as exc:
            if exc.errno not in (errno.ESRCH, errno.EPERM):
                raise


def _run_id_of(pid: int) -> str | None:
    """The ACTOR_RUN_ID a process was exec'd with, when /proc lets us read it."""
    try:
        fd = os.open(f"/proc/{pid}/environ", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = b""
        while chunk := os.read(fd, CHUNK):
            data += chunk
    except OSError:
        return None
    finally:
        os.close(fd)
    for entry in data.split(b"\0"):
        if entry.startswith(_RUN_ID_KEY):
            return entry[len(_RUN_ID_KEY) :].decode("utf-8", "replace")
    return None


def _children_by_scan(parent: int) -> list[int]:
    """Fallback for kernels without /proc/PID/task/TID/children: a full /proc scan."""
    found: list[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == parent:
            found.append(int(name))
    return found


if __name__ == "__main__":
    main()
