"""The pristine forker: the parent of every run's child, a process that never sees a run.

A fork-mode run is a fork of whatever process forks it, heap included: forked from the launcher,
it could find earlier runs' inputs and environments with ``gc.get_objects()`` or by scanning
freed memory with ``ctypes``. So the launcher forks this process at start-up, before it receives
its first run, and every run's child is forked from here instead. The forker only ever learns
"fork a spare" and pids: run input, environment, stdout and results stay in the launcher, which
writes each run into the spare's memfd directly.

It forks spares on request and hands their descriptors to the launcher (``SCM_RIGHTS`` over a
``SOCK_SEQPACKET`` socketpair), reaps every child with ``wait4`` and reports
``(pid, status, rusage)``, and, as the child subreaper, kills the orphans no live run claims.
Messages are one kind byte and a fixed struct; see :class:`ForkerHandle` for the launcher's end.
"""

import contextlib
import ctypes
import errno
import os
import select
import signal
import socket
import struct
import traceback
from collections import deque
from typing import Any

from workers.atfork import thread_count
from workers.flight import Reaped, Spare, fork_spare
from workers.sandbox import LAUNCHER_SIGNALS, RUN_FD, Sandbox

PR_SET_CHILD_SUBREAPER = 36
EXIT_FORKER_CRASHED = 70
_MAX_FD = 1 << 20

REQ_SPARE = b"S"
REQ_PING = b"P"
SPARE = b"C"  # + pid; five descriptors: stdout, stderr, status, go, run memfd
NO_SPARE = b"N"  # + why the fork failed
REAPED = b"X"  # + pid, status, utime, stime, maxrss
PONG = b"Q"
_PID = struct.Struct("!i")
_REAPED = struct.Struct("!iiddq")
_SPARE_FDS = 5
_FDS = struct.Struct(f"{_SPARE_FDS}i")  # their numbers, as SCM_RIGHTS carries them
_CHILDREN_READ = 4096


class ForkerGone(Exception):
    """The forker exited or its socket broke; the launcher cannot start or reap runs."""


def start_forker(sandbox: Sandbox, *, uid_sweep: bool) -> "ForkerHandle":
    """Fork the forker from a launcher that has not yet received a run.

    ``uid_sweep``: every run has a uid of its own (root with a uid range), so a reparented
    process belongs to a live run exactly when it runs as that run's uid.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        status = EXIT_FORKER_CRASHED
        try:
            keep = theirs.fileno()
            os.closerange(RUN_FD + 1, keep)  # the worker channel above all: its EOF must mean
            os.closerange(keep + 1, _MAX_FD)  # "the launcher is gone"
            status = Forker(sandbox, theirs, uid_sweep=uid_sweep).run()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    theirs.close()
    ours.setblocking(False)
    return ForkerHandle(pid, ours)


def _noop(signum: int, frame: Any) -> None:
    """Signals only need to wake the loop; the wakeup fd carries their numbers."""


class Forker:
    """The forker's loop: requests from the launcher, SIGCHLD, and nothing else."""

    def __init__(self, sandbox: Sandbox, sock: socket.socket, *, uid_sweep: bool) -> None:
        _become_subreaper()
        sandbox.harden()  # inherited by every child: no per-run cost
        sandbox.enter_forker_namespace()  # likewise: see there
        self._sandbox = sandbox
        self._without_hooks = thread_count() == 1  # it is, unless a preload hook started one
        self._sock = sock
        self._uid_sweep = uid_sweep
        self._live: set[int] = set()  # children forked and not yet reaped: spares and runs
        pid = os.getpid()
        try:  # kept open and re-read at offset 0: no file object per sweep
            self._children_fd = os.open(f"/proc/{pid}/task/{pid}/children", os.O_RDONLY)
        except FileNotFoundError:
            self._children_fd = -1  # a kernel without it: _children scans /proc
        self._wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in LAUNCHER_SIGNALS:
            signal.signal(sig, _noop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a group's Ctrl-C: the supervisor's

    def run(self) -> int:
        """Serve until the launcher goes away; then kill every descendant and reap it."""
        poll = select.poll()
        poll.register(self._sock, select.POLLIN)
        poll.register(self._wake_r, select.POLLIN)
        try:
            while True:
                for fd, _ in poll.poll():
                    if fd == self._wake_r:
                        self._on_signals()
                    elif not self._on_request():
                        return 0
        finally:
            self._kill_everything()

    def _on_request(self) -> bool:
        try:
            data = self._sock.recv(16)
        except OSError:
            data = b""
        if data == REQ_SPARE:
            self._fork_spare()
        elif data == REQ_PING:
            self._tell(PONG)
        return bool(data)

    def _on_signals(self) -> None:
        """SIGCHLD reaps. SIGTERM and SIGHUP only wake it: a signal to the whole process group
        must leave shutdown to the supervisor; the forker ends when the launcher goes away."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 512)
        self._reap()

    def _fork_spare(self) -> None:
        try:
            spare = fork_spare(self._sandbox, without_hooks=self._without_hooks)
        except OSError as exc:
            self._tell(NO_SPARE + str(exc).encode("utf-8", "replace")[:1000])
            return
        self._live.add(spare.pid)
        fds = [spare.out_fd, spare.err_fd, spare.note_fd, spare.go_fd, spare.run_fd]
        try:
            # socket.send_fds, without the array it builds: fewer pages written between forks
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _FDS.pack(*fds))]
            self._sock.sendmsg([SPARE + _PID.pack(spare.pid)], rights)
        except OSError:
            pass  # the launcher is gone; the loop sees EOF next
        finally:
            spare.retire()  # our copies only: the launcher holds its own now

    def _tell(self, message: bytes) -> None:
        with contextlib.suppress(OSError):
            self._sock.send(message)

    def _reap(self) -> None:
        """Reap every zombie; a child's group is killed while its zombie still holds the pgid,
        so a grandchild that outlived the script dies with it."""
        exited = False
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break
            if info is None:
                break
            pid = info.si_pid
            ours = pid in self._live
            if ours:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            _, status, ru = os.wait4(pid, 0)
            exited = True
            if ours:
                self._live.discard(pid)
                self._tell(
                    REAPED + _REAPED.pack(pid, status, ru.ru_utime, ru.ru_stime, ru.ru_maxrss)
                )
        if exited:
            self._sweep_orphans()

    def _sweep_orphans(self) -> None:
        """Kill reparented descendants that no live run claims.

        A run's processes are recognised by what a script cannot forge: its uid when every run
        has its own, else its session (the run child's pid). A descendant that left its run's
        session is then an orphan as soon as it is reparented here, even while its run goes on.
        Killing one reparents its children here in turn, and its death brings us back through
        :meth:`_reap`, so whole escaped trees converge.
        """
        live = self._live
        uids: set[int | None] | None = None  # the live runs' uids, read only when needed
        for pid in self._children():
            if pid in live:
                continue
            try:
                if os.getsid(pid) in live:
                    continue
            except ProcessLookupError:
                continue
            if self._uid_sweep:
                if uids is None:
                    uids = {_uid_of(child) for child in live} - {0, None}
                if _uid_of(pid) in uids:
                    continue
            _kill_quietly(pid)

    def _children(self) -> list[int]:
        """Our direct children, zombies included: one small /proc read.

        Each run's end brings a sweep, and every object a forker's Python makes between two
        forks lands on a copy-on-write page: a ``pread`` at offset 0 of a descriptor opened
        once costs a few pages fewer than ``open()``'s file objects.
        """
        if self._children_fd < 0:
            return _children_by_scan(os.getpid())
        data = os.pread(self._children_fd, _CHILDREN_READ, 0)
        while len(data) % _CHILDREN_READ == 0 and data:  # a long list: read on
            more = os.pread(self._children_fd, _CHILDREN_READ, len(data))
            if not more:
                break
            data += more
        return [int(p) for p in data.split()]

    def _kill_everything(self) -> None:
        for pid in self._live:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        while True:
            for pid in self._children():
                _kill_quietly(pid)
            try:
                os.wait4(-1, 0)
            except ChildProcessError:
                break


class ForkerHandle:
    """The launcher's end of its forker: spares in, pids and statuses back; never blocks,
    except in :meth:`wait_spare`, while a run waits for a child."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock = sock
        self._events: deque[Spare | Reaped | str | None] = deque()
        self.requested = False  # a spare is on its way

    def fileno(self) -> int:
        return self._sock.fileno()

    def request_spare(self) -> None:
        if not self.requested:
            self._send(REQ_SPARE)
            self.requested = True

    def ping(self) -> None:
        self._send(REQ_PING)

    def events(self) -> list[Spare | Reaped | str | None]:
        """What the forker said since the last call: a :class:`Spare`, a :class:`Reaped`, a
        string (why a spare could not be forked) or None (a pong).

        :raises ForkerGone: on EOF or a broken socket.
        """
        while self._receive(block=False):
            pass
        found = list(self._events)
        self._events.clear()
        return found

    def wait_spare(self) -> Spare:
        """Block until the requested spare arrives; other events wait for :meth:`events`.

        :raises OSError: the forker could not fork one.
        :raises ForkerGone: the forker is gone.
        """
        self.request_spare()
        while True:
            for event in self._events:
                if isinstance(event, Spare | str):
                    self._events.remove(event)
                    if isinstance(event, str):
                        raise OSError(errno.EAGAIN, event)
                    return event
            self._receive(block=True)

    def close(self) -> None:
        """Close our end: the forker kills every child it has and exits."""
        self._sock.close()
        for event in self._events:
            if isinstance(event, Spare):
                event.retire()
        self._events.clear()

    def _receive(self, *, block: bool) -> bool:
        try:
            data, fds, _, _ = socket.recv_fds(
                self._sock, 64, _SPARE_FDS, 0 if block else socket.MSG_DONTWAIT
            )
        except BlockingIOError:
            return False
        except OSError as exc:
            raise ForkerGone(f"forker socket broke: {exc}") from exc
        if not data:
            raise ForkerGone("the forker exited")
        kind, body = data[:1], data[1:]
        if kind == SPARE and len(fds) == _SPARE_FDS:
            self.requested = False
            (pid,) = _PID.unpack(body)
            self._events.append(Spare(pid, *fds))
        elif kind == NO_SPARE:
            self.requested = False
            self._events.append(body.decode("utf-8", "replace"))
        elif kind == REAPED:
            self._events.append(Reaped(*_REAPED.unpack(body)))
        elif kind == PONG:
            self._events.append(None)
        else:
            for fd in fds:
                os.close(fd)
            raise ForkerGone(f"the forker sent an unknown message {kind!r}")
        return True

    def _send(self, data: bytes) -> None:
        try:
            self._sock.send(data)
        except OSError as exc:
            raise ForkerGone(f"forker socket broke: {exc}") from exc


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def _uid_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _kill_quietly(pid: int) -> None:
    """SIGKILL a stray process and the group it leads (after setsid, its own tree)."""
    for kill in (os.kill, os.killpg):
        try:
            kill(pid, signal.SIGKILL)
        except OSError as exc:
            if exc.errno not in (errno.ESRCH, errno.EPERM):
                raise


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
