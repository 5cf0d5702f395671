"""The worker process: a thin relay between the supervisor and its sandbox launcher.

It starts its launcher (a fresh single-threaded interpreter that forks one child per run),
then opens a ZeroMQ DEALER to the supervisor, announces itself with ``hello`` and relays:
``run`` bodies to the launcher, ``result`` bodies back, unchanged. It owns nothing durable:
killing it loses nothing, because the supervisor records every run it held as ``worker_lost``.

It writes its scoreboard slot (state, heartbeat, current run, counters, rss) so the supervisor
can see it without asking. If the supervisor dies, the kernel kills the worker
(``PR_SET_PDEATHSIG``); its launcher then sees EOF and kills every run, so a restarted
supervisor can retry them without two copies running at once.
"""

import ctypes
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil
import zmq

from protocol import ProtocolError, decode
from protocol.messages import SUPERVISOR_TO_WORKER, CancelRun, Hello, Run, Stop
from protocol.sockets import has_message
from workers.launcher_handle import Finished, Launcher, LauncherGone, SandboxConfig, start_launcher
from workers.logs import setup_logging
from workers.scoreboard import Scoreboard, SlotFields, SlotState

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
EXIT_OK = 0
EXIT_SUPERVISOR_GONE = 3
EXIT_LAUNCHER_GONE = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    """Everything a worker needs, passed once at spawn."""

    worker_id: str
    slot: int
    endpoint: str
    scoreboard_path: str
    scoreboard_slots: int
    supervisor_pid: int
    capacity: int
    sandbox: SandboxConfig
    heartbeat_interval_s: float = 0.5
    log_level: str = "info"
    log_format: str = "text"


def worker_main(spec: WorkerSpec) -> int:
    """Entry point of a spawned worker process; returns its exit code."""
    _die_with_parent(spec.supervisor_pid)
    _scrub_environment(spec.sandbox.env_allow)
    # A SIGTERM or SIGINT here was sent to the whole process group or cgroup (Ctrl-C in a shell,
    # timeout(1), systemd's KillMode=control-group). Shutdown is the supervisor's: it gives runs
    # their grace period, then sends STOP; a dead supervisor takes the worker with it (PDEATHSIG).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(spec.log_level, spec.log_format)
    launcher = start_launcher(spec.sandbox)
    try:
        return Worker(spec, launcher).run()
    finally:
        launcher.close()


def _scrub_environment(allowed: tuple[str, ...]) -> None:
    """Drop everything but the allow-list: the launcher inherits this environment, and the
    supervisor's may hold credentials (a database URL, say)."""
    for name in [n for n in os.environ if n not in allowed]:
        del os.environ[name]


def _die_with_parent(parent_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(EXIT_SUPERVISOR_GONE)


class Worker:
    """The relay loop: bounded poll, then named steps."""

    def __init__(self, spec: WorkerSpec, launcher: Launcher) -> None:
        self.spec = spec
        self.launcher = launcher
        self.in_flight: dict[tuple[str, int], float] = {}
        self.stopping = False
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.ROUTING_ID, spec.worker_id.encode())
        self._sock.setsockopt(zmq.LINGER, 2000)
        self._sock.connect(spec.endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(launcher.fileno(), zmq.POLLIN)
        self._board = Scoreboard.attach(Path(spec.scoreboard_path), spec.scoreboard_slots)
        self._slot = self._board.slot(spec.slot)
        self._me = psutil.Process()
        self._fields = SlotFields(
            pid=os.getpid(),
            launcher_pid=launcher.pid,
            state=SlotState.READY,
            started_at=time.time(),
            heartbeat=time.monotonic(),
        )
        self._next_rss = 0.0

    def run(self) -> int:
        self._slot.write(self._fields)
        self._send(
            orjson.dumps(
                Hello(
                    worker_id=self.spec.worker_id,
                    pid=os.getpid(),
                    launcher_pid=self.launcher.pid,
                    capacity=self.spec.capacity,
                )
            )
        )
        interval_ms = int(self.spec.heartbeat_interval_s * 1000)
        try:
            while not (self.stopping and not self.in_flight):
                ready = dict(self._poller.poll(interval_ms))
                if self._sock in ready:
                    self._on_supervisor_messages()
                if self.launcher.fileno() in ready:
                    self._on_launcher_events()
                self.launcher.keepalive(time.monotonic())
                self._beat()
                if os.getppid() != self.spec.supervisor_pid:
                    log.error("supervisor is gone; killing runs and exiting")
                    self.launcher.kill_all()
                    return EXIT_SUPERVISOR_GONE
        except LauncherGone:
            log.error(
                "launcher %d is gone; exiting so the supervisor replaces this worker",
                self.launcher.pid,
            )
            return EXIT_LAUNCHER_GONE
        finally:
            self._fields.state = SlotState.STOPPING
            self._slot.write(self._fields)
            self._sock.close(linger=2000)
            self._ctx.term()
            self._board.close()
        return EXIT_OK

    def _send(self, body: bytes) -> None:
        self._sock.send(body, copy=False)

    def _on_supervisor_messages(self) -> None:
        while has_message(self._sock):
            body = self._sock.recv(zmq.NOBLOCK)
            try:
                message = decode(body, SUPERVISOR_TO_WORKER)
            except ProtocolError as exc:
                self._fields.bad_messages += 1  # shown by status; written with the next beat
                log.warning("dropped malformed message from supervisor: %s", exc)
                continue
            if isinstance(message, Run):
                self._start(message, body)
            elif isinstance(message, Stop):
                self._stop(message)
            elif isinstance(message, CancelRun) and (message.run_id, message.attempt) in (
                self.in_flight
            ):  # not held: its result is already on the way
                self.launcher.cancel(message.run_id, message.attempt)

    def _start(self, run: Run, body: bytes) -> None:
        self.in_flight[(run.run_id, run.attempt)] = time.time()
        self.launcher.submit(body)
        self._fields.in_flight = len(self.in_flight)
        self._fields.run_id = run.run_id
        self._fields.attempt = run.attempt
        self._fields.child_pid = 0
        self._slot.write(self._fields)

    def _stop(self, stop: Stop) -> None:
        self.stopping = True
        self._fields.state = SlotState.STOPPING
        if stop.kill and self.in_flight:
            log.info("killing %d run(s) on request", len(self.in_flight))
            self.launcher.kill_all()

    def _on_launcher_events(self) -> None:
        results: list[bytes] = []
        for event in self.launcher.receive():
            if isinstance(event, Finished):
                results.append(event.result_body)
                self.in_flight.pop((event.run_id, event.attempt), None)
                self._fields.in_flight = len(self.in_flight)
                self._fields.runs_done += 1
                if not event.succeeded:
                    self._fields.runs_failed += 1
            else:
                self._fields.run_id = event.run_id
                self._fields.attempt = event.attempt
                self._fields.child_pid = event.child_pid
                self._fields.run_started_at = event.started_at
        # the slot is written first so that whoever gets a result sees the slot already counting it
        self._slot.write(self._fields)
        for body in results:
            self._send(body)

    def _beat(self) -> None:
        now = time.monotonic()
        self._fields.heartbeat = now
        if now >= self._next_rss:
            self._next_rss = now + 5.0
            self._fields.rss_kb = self._me.memory_info().rss // 1024
        self._slot.write(self._fields)
