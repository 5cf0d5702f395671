"""The supervisor process: one thread that owns the sockets, the worker pool and the signals.

The loop never blocks on the database or on a script. It polls, with a timeout equal to the
time until the top of the schedule heap, the worker ROUTER, the control ROUTER, the batch
writer's commit pipe, the signal wake-up pipe and every worker's process sentinel; then it runs
named steps: fire what is due, dispatch to idle workers, look after the pool. What happens to
each run is decided by the run book (:mod:`supervisor.runbook`); this shell moves bytes and
processes. It builds every resource in ``__init__`` and releases them, in reverse, through one
:class:`contextlib.ExitStack`.
"""

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import zmq

from protocol import ProtocolError, decode
from protocol.codec import encode
from protocol.messages import WORKER_TO_SUPERVISOR, CancelRun, Hello, Message, Result, Run, Stop
from protocol.sockets import has_message, recv_frames, send_frames
from supervisor import events
from supervisor.actors import build_actors
from supervisor.budget import check_pool_memory
from supervisor.code.book import CodeBook
from supervisor.code.sync import make_cache
from supervisor.config import Config
from supervisor.control import ControlServer
from supervisor.http.process import HttpSide
from supervisor.leftovers import mark_owned
from supervisor.notify import Notifier
from supervisor.pool import WorkerHandle, WorkerPool
from supervisor.preflight import prepare_sandbox, runs_as
from supervisor.reader import Reader
from supervisor.reload import ReloadRejected, reload_config
from supervisor.requests import Requests
from supervisor.retention import retention_for
from supervisor.runbook import IDEMPOTENCY_WINDOW_S, KILL_WAIT_S, OVERDUE_SLACK_S, Phase, RunBook
from supervisor.settings import SupervisorSettings
from supervisor.startup import (
    bind_worker_router,
    close_writer,
    open_durable,
    prepare_alerts,
    secure_control,
    seed_last_runs,
)
from supervisor.status import StoreHealth, status_line
from supervisor.wakeup import SignalPipe
from supervisor.workflows.book import WorkflowBook
from supervisor.writer import BatchWriter
from workers.logs import setup_logging
from workers.scoreboard import Scoreboard

log = logging.getLogger(__name__)

TICK_S = 0.5  # maintenance cadence: heartbeats, respawns, overdue runs, shutdown progress
RECV_BATCH = 256  # worker messages taken per loop turn, so no socket starves another
EXIT_LEASE_LOST = 6  # the store's lease was lost while running: another supervisor may act


class Supervisor:
    """Build with a validated :class:`Config`, then call :meth:`run` (blocks until stopped).

    ``overrides`` are the command-line settings, re-applied when SIGHUP reloads the file.
    Building opens the store, takes its lease and binds the sockets; the sandbox check forks,
    so it runs before any thread is started.
    """

    def __init__(
        self,
        config: Config,
        *,
        overrides: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        standby: bool = False,
    ) -> None:
        self.config = config
        self.settings: SupervisorSettings = config.supervisor
        self._overrides = dict(overrides or {})
        self._clock = clock
        self.instance_id = events.new_id()[:12]
        self.started_at = clock()
        self.exit_code = 0
        self.notify = Notifier()  # systemd: READY=1, STOPPING=1, WATCHDOG=1, STATUS=
        self._next_tick = 0.0
        self._sentinels: set[int] = set()
        self._http_fd: int | None = None
        with contextlib.ExitStack() as stack:
            stack.callback(self.notify.close)
            self._runtime_dir = Path(tempfile.mkdtemp(prefix="actor-supervisor-"))
            stack.callback(shutil.rmtree, self._runtime_dir, ignore_errors=True)
            mark_owned(self._runtime_dir)  # so a start-up after a SIGKILL knows it is a leftover
            last = stack.enter_context(contextlib.ExitStack())  # released after the store closes
            self._open_state(stack, last, standby)
            self._open_sockets(stack)
            self._build_runs()
            self._stack = stack.pop_all()

    # --- building (in __init__) --------------------------------------------------------------

    def _open_state(
        self, stack: contextlib.ExitStack, last: contextlib.ExitStack, standby: bool
    ) -> None:
        """Sandbox, store, lease, spool, writer, alerts, code: everything before the loop."""
        self._control_endpoint, self._control_curve = secure_control(self.config, self._overrides)
        # Checked before the lease, so that a standby with a broken configuration says so at
        # once, not when it takes over: its checks' uid is no run's (preflight.check_uid).
        self.sandbox = prepare_sandbox(self.config)
        if (warning := check_pool_memory(self.settings)) is not None:
            log.warning(warning, extra={"event": "pool_memory"})
        durable = open_durable(
            self.config, stack, last, instance_id=self.instance_id, standby=standby,
            run_uids=self.sandbox.run_uids,
        )  # fmt: skip
        self.store, self.lease, self.epoch = durable.store, durable.lease, durable.epoch
        self.spool, self.dead_letters = durable.spool, durable.dead_letters
        self._stored_states, self._unfinished = durable.stored_states, durable.unfinished
        self.actors = build_actors(self.config.actors, self._stored_states)
        seed_last_runs(self.actors, durable.last_runs)
        s = self.settings
        self.writer = BatchWriter(
            self.store, batch_size=s.batch_size, max_age_s=s.batch_max_age_ms / 1000,
            spool=self.spool,  # the writer owns and closes it from here on
            epoch=self.epoch, dead_letters=self.dead_letters,
            retention=retention_for(s, self.store),  # retention_days: pruned between batches
        )  # fmt: skip
        self.sender = prepare_alerts(
            self.config, self.store, self.writer, sandbox=self.sandbox, actors=self.actors.get,
            instance_id=self.instance_id, clock=self._clock,
        )  # fmt: skip
        self.reader = Reader()  # reads the loop must not wait for (an actor's code)
        cache = make_cache()
        mark_owned(cache)
        stack.callback(shutil.rmtree, cache, ignore_errors=True)
        self.codebook = CodeBook(
            store=self.store, writer=self.writer, reader=self.reader, cache=cache,
            actors=lambda: self.actors, on_ready=self._dispatch, clock=self._clock,
            runs_as=runs_as(self.config),
        )  # fmt: skip
        self.codebook.startup()  # hash every script, record what changed: before the loop
        self.http = HttpSide.prepare(self.config)  # refuses a bad listen address before workers

    def _open_sockets(self, stack: contextlib.ExitStack) -> None:
        self._ctx: zmq.Context[Any] = zmq.Context()
        stack.callback(self._ctx.term)
        self.control = ControlServer(self._ctx, self._control_endpoint, self._control_curve)
        stack.callback(self.control.close)
        endpoint = f"ipc://{self._runtime_dir}/workers.sock"
        self._workers = bind_worker_router(self._ctx, endpoint)
        stack.callback(self._workers.close, linger=0)
        self._signals = SignalPipe()
        stack.callback(self._signals.close)
        self._poller = zmq.Poller()
        for fd in (self.writer.wakeup_fd(), self.reader.wakeup_fd(), self._signals.fileno()):
            self._poller.register(fd, zmq.POLLIN)
        self._poller.register(self.control.socket, zmq.POLLIN)
        self._poller.register(self._workers, zmq.POLLIN)
        self.scoreboard = Scoreboard.create(self.settings.workers)
        stack.callback(self.scoreboard.close)
        s = self.settings
        self.pool = WorkerPool(
            size=s.workers, capacity=s.concurrency, endpoint=endpoint,
            scoreboard=self.scoreboard, sandbox=self.sandbox,
            heartbeat_timeout_s=s.heartbeat_timeout_s, log_level=s.log_level,
            log_format=s.log_format,
        )  # fmt: skip

    def _build_runs(self) -> None:
        self.book = RunBook(
            sink=self.writer, replies=self.control, code=self.codebook, actors=self.actors,
            settings=self.settings, clock=self._clock, on_ready=self._dispatch, epoch=self.epoch,
        )  # fmt: skip
        since = self._clock() - IDEMPOTENCY_WINDOW_S
        for (name, key), run_id in self.store.idempotency_keys(since).items():
            self.book.idempotency.add(name, key, run_id, self._clock(), None)
        self.workflows = WorkflowBook(
            book=self.book, configs=lambda: self.config.workflows,
            capacity=lambda: self.settings.workers * self.settings.concurrency,
            epoch=self.epoch, clock=self._clock,
        )  # fmt: skip
        self.workflows.recover(self.store)  # before the run book recovers their step runs
        self.requests = Requests(self)
        self.store_health = StoreHealth(self.writer, self.store.description, self.instance_id)

    # --- starting and stopping (in run) ------------------------------------------------------

    def run(self) -> int:
        """Run until a stop signal has been handled; return the process exit code."""
        try:
            with self._stack as stack:
                self._start(stack)
                self._loop()
        finally:
            self.book.attempt_log.summarize(force=True)
            log.info("supervisor stopped", extra=dict(self.book.counters))
        return self.exit_code

    def _start(self, stack: contextlib.ExitStack) -> None:
        """Threads, signals, workers, HTTP; each registers how it stops, in reverse order."""
        self.lease.start_keeping()
        self.writer.start()
        if self.sender is not None:
            self.sender.start()
        stack.callback(self._on_commits)  # the last waiters hear what is now durable
        stack.callback(
            close_writer, self.writer, self.sender, self.actors.values(), self.instance_id,
            self.book.counters,
        )  # fmt: skip
        self.reader.start()
        stack.callback(self.reader.close)
        self._signals.install()
        self.pool.start()
        stack.callback(self._stop_workers)
        self._sync_sentinels()
        self.http.start()
        stack.callback(self.http.stop)  # first: it talks to the control socket closed later
        self._watch_http()
        self.book.restore(self._unfinished)
        self._unfinished = []
        self.workflows.after_restore(self.store)
        self.writer.put(events.supervisor_event(
            "supervisor_started", self.instance_id, pid=os.getpid(), actors=sorted(self.actors)
        ))  # fmt: skip
        s = self.settings
        log.info("supervisor started", extra={
            "control": self._control_endpoint, "workers": s.workers, "concurrency": s.concurrency,
            "actors": len(self.actors), "store": self.store.description,
        })  # fmt: skip
        self.notify.ready(status_line(self))

    def _kill_runs(self) -> None:
        for handle in self.pool.handles():
            self._send_worker(handle.identity, Stop(kill=True))

    def _stop_workers(self) -> None:
        self._kill_runs()
        self.pool.stop_all(timeout=self.settings.kill_grace_s + KILL_WAIT_S)

    def _loop(self) -> None:
        handlers: dict[object, Callable[[], None]] = {
            self._workers: self._on_worker_messages,
            self.control.socket: self.requests.handle_all,
            self._signals.fileno(): self._on_signals,
            self.writer.wakeup_fd(): self._on_commits,
            self.reader.wakeup_fd(): self.reader.drain,
        }
        committed = False
        while self.book.phase is not Phase.DONE:
            # After a commit of its own the loop looks at its sockets without waiting, and
            # takes the commit's news in the same turn: the writer wakes it only for its
            # thread's commits (see BatchWriter.held).
            ready = self._poller.poll(0 if committed else self._poll_timeout_ms(self._clock()))
            with self.writer.held() as turn:  # the turn's records wake the writer thread once
                if committed:
                    self._take_commits()
                for item, _ in ready:
                    if (handler := handlers.get(item)) is not None:
                        handler()
                    elif item == self._http_fd:
                        self.http.on_exit()
                        self._watch_http()
                    elif isinstance(item, int):
                        self._on_worker_exit(item)
                if self.book.phase is Phase.RUNNING:
                    self.book.fire_due(self._clock())
                    self._dispatch()
            committed = turn.committed
            if time.monotonic() >= self._next_tick:
                self._next_tick = time.monotonic() + TICK_S
                self._maintain()
            self.notify.tick()  # from the loop itself: a hung loop stops pinging the watchdog

    def _poll_timeout_ms(self, now: float) -> int:
        cap_ms = max(1, int((self._next_tick - time.monotonic()) * 1000))
        if (ping_in := self.notify.next_ping_in()) is not None:  # a WatchdogSec under a tick
            cap_ms = min(cap_ms, max(1, int(ping_in * 1000) + 1))
        if self.book.phase is not Phase.RUNNING:
            return cap_ms
        timeout = self.book.heap.timeout_ms(now, cap_ms)
        if timeout == 0 and self.writer.writing:
            # More fires are due (a burst is taken a chunk a turn): wait a millisecond in the
            # poll, without the GIL, so the writer thread commits the chunks made so far and
            # their runs go to free workers, instead of all waiting for the whole burst. A
            # commit ends the wait at once.
            return 1
        return timeout

    def _on_signals(self) -> None:
        for signum in self._signals.take():
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._begin_shutdown(signum.name)
            elif signum == signal.SIGHUP and self.book.phase is Phase.RUNNING:
                self._reload()

    def _on_commits(self) -> None:
        self.writer.drain_wakeups()
        self._take_commits()

    def _take_commits(self) -> None:
        self.book.on_commits(self.store.refused.take())

    def _on_worker_messages(self) -> None:
        for taken in range(RECV_BATCH):
            if taken and not has_message(self._workers):  # the first: the poller said readable
                return
            try:
                frames = recv_frames(self._workers)
            except zmq.Again:
                return
            handle = self.pool.by_identity(frames[0]) if len(frames) == 2 else None
            if handle is None:
                self.book.counters["bad_worker_messages"] += 1
                continue
            try:
                message = decode(frames[1], WORKER_TO_SUPERVISOR)
            except ProtocolError as exc:
                self.book.counters["bad_worker_messages"] += 1
                log.warning("malformed message from worker %s: %s", handle.worker_id, exc)
                continue
            if isinstance(message, Result):
                handle.in_flight.discard(message.run_id)
                self.book.on_result(handle.worker_id, message)
            elif isinstance(message, Hello):
                self.pool.on_hello(frames[0])
                log.info("worker %s ready", handle.worker_id, extra={"pid": message.pid})

    def _dispatch(self) -> None:
        self.book.dispatch(self)

    # The pool as the run book's Workers: a run takes its worker's room when it is given the
    # worker, and is sent once its running row is committed.

    def pick(self) -> WorkerHandle | None:
        return self.pool.pick()

    def claim(self, handle: WorkerHandle, run_id: str) -> None:
        handle.in_flight.add(run_id)

    def release(self, handle: WorkerHandle, run_id: str) -> None:
        handle.in_flight.discard(run_id)

    def send(self, handle: WorkerHandle, message: Run) -> bool:
        if (error := self._send_worker(handle.identity, message)) is not None:
            self.pool.kill(handle, f"unreachable: {error}")
            return False
        return True

    def _send_worker(self, identity: bytes, message: Message) -> zmq.ZMQError | None:
        try:
            send_frames(self._workers, (identity, encode(message)))
        except zmq.ZMQError as exc:
            log.debug("could not reach worker %s: %s", identity, exc)
            return exc
        return None

    def _sync_sentinels(self) -> None:
        current = set(self.pool.sentinels())
        for fd in current - self._sentinels:
            self._poller.register(fd, zmq.POLLIN)
        for fd in self._sentinels - current:
            self._poller.unregister(fd)
        self._sentinels = current

    def _on_worker_exit(self, sentinel: int) -> None:
        gone = self.pool.reap(sentinel)
        self._sync_sentinels()
        if gone is None:
            return
        expected = self.book.phase is not Phase.RUNNING and not gone.lost_runs
        (log.info if expected else log.error)(
            "worker %s %s", gone.handle.worker_id, gone.description,
            extra={"lost_runs": len(gone.lost_runs)},
        )  # fmt: skip
        self.book.worker_gone(gone.handle.worker_id, gone.description, gone.lost_runs)

    def _kill_overdue(self) -> None:
        for run_id, worker_id in self.book.overdue():
            handle = self.pool.by_identity(worker_id.encode())
            if handle is not None and not handle.killed_by_us:
                late = f"{OVERDUE_SLACK_S:.0f}s past its timeout and kill grace"
                self.pool.kill(handle, f"run {run_id} is {late}")

    def _maintain(self) -> None:
        self._check_lease()
        running = self.book.phase is Phase.RUNNING
        self.pool.maintain(respawn=running)
        self._sync_sentinels()
        self.http.maintain(respawn=running)
        self._watch_http()
        self._kill_overdue()
        self.book.idempotency.expire(self._clock())
        self.book.scheduler.summarize_skips()
        self.book.attempt_log.summarize()
        self.store_health.check()
        if running:
            self.workflows.tick(self._clock())
            self.notify.status(status_line(self))
        elif self.book.advance_shutdown():
            self._kill_runs()

    def _check_lease(self) -> None:
        if self.lease.valid() or self.exit_code == EXIT_LEASE_LOST:
            return
        self.exit_code = EXIT_LEASE_LOST
        log.error(
            "%s is no longer ours (term %d): stopping, so that only its holder acts",
            self.lease.description, self.epoch, extra={"event": "lease_lost"},
        )  # fmt: skip
        self._begin_shutdown("lease lost")
        self._begin_shutdown("lease lost")  # no grace: another supervisor may run these now

    def _watch_http(self) -> None:
        """Keep the HTTP process's sentinel (a pidfd) registered in the poller while it runs."""
        fd = self.http.sentinel()
        if fd != self._http_fd:
            if self._http_fd is not None:
                self._poller.unregister(self._http_fd)
            if fd is not None:
                self._poller.register(fd, zmq.POLLIN)
            self._http_fd = fd

    def _reload(self) -> None:
        """SIGHUP: as :meth:`reload`; a rejected file is logged (and recorded) only."""
        with contextlib.suppress(ReloadRejected):
            self.reload(by="SIGHUP")

    def reload(self, by: str = "reload request") -> dict[str, Any]:
        """Reload the configuration file: the run book takes the new actors; the shell, the
        live settings. Returns what changed.

        :raises ReloadRejected: the file is invalid; nothing changed.
        """
        reloaded = reload_config(
            self.config, self._overrides, sandbox=self.sandbox, book=self.book,
            codebook=self.codebook, stored_states=self._stored_states,
            instance_id=self.instance_id, by=by,
        )  # fmt: skip
        new = reloaded.config
        self.config, self.settings = new, new.supervisor
        self.pool.heartbeat_timeout_s = new.supervisor.heartbeat_timeout_s
        setup_logging(new.supervisor.log_level, new.supervisor.log_format)
        return reloaded.answer()

    def _begin_shutdown(self, why: str) -> None:
        draining = self.book.phase is Phase.RUNNING
        self.book.begin_shutdown(why)
        if draining:
            grace = self.settings.shutdown_grace_s
            self.notify.stopping(
                f"stopping ({why}): {len(self.book.in_flight())} run(s) get {grace:.0f}s to finish"
            )
        self._next_tick = 0.0  # act now, not at the next tick

    def kill_on_worker(self, worker_id: str, run_id: str, attempt: int) -> bool:
        """Have ``worker_id`` kill one attempt it holds (a cancel); False: it is unreachable,
        and its death will end the attempt as lost."""
        return (
            self._send_worker(worker_id.encode(), CancelRun(run_id=run_id, attempt=attempt)) is None
        )
