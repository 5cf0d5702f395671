"""The supervisor process: one thread that owns the schedule, the runs and the sockets.

The loop never blocks on the database or on a script. It polls, with a timeout equal to the
time until the top of the schedule heap, the worker ROUTER, the control ROUTER, the batch
writer's commit pipe, the signal wake-up pipe and every worker's process sentinel; then it runs
named steps: fire what is due, dispatch to idle workers, look after the pool.

A run is durable from the moment it is accepted: the client hears "accepted", and a worker
gets the run, only once its ``queued`` row is committed. The final outcome is likewise
committed before a waiting client hears it. A retryable failure becomes a new attempt: a queued
row due after its backoff, so a retry waiting costs nothing and survives a restart.
"""

import logging
import os
import random
import shutil
import signal
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Any

import orjson
import zmq

from protocol import ProtocolError, decode
from protocol.messages import WORKER_TO_SUPERVISOR, Hello, Result, Run, Stop
from protocol.outcomes import Reason, Status
from protocol.sockets import has_message
from supervisor import events
from supervisor.actors import ActorRuntime, build_actors
from supervisor.alerts.book import AlertBook
from supervisor.alerts.sender import AlertSender
from supervisor.breaker import PROBE, Breaker
from supervisor.budget import check_pool_memory
from supervisor.code.book import CodeBook
from supervisor.code.sync import ActorCode, make_cache
from supervisor.config import Config, load_config
from supervisor.control import ControlServer
from supervisor.controlkeys import control_endpoint, server_keys
from supervisor.deadletter import DeadLetters, dead_letter_path
from supervisor.errors import ConfigError, StartupError
from supervisor.http.process import HttpSide
from supervisor.idempotency import IdempotencyKeys, digest
from supervisor.lease import acquire as acquire_lease
from supervisor.lease import open_lease
from supervisor.leftovers import clean_leftovers, mark_owned
from supervisor.metrics import RunMetrics
from supervisor.notify import Notifier
from supervisor.pool import WorkerPool
from supervisor.preflight import check_reloaded_scripts, prepare_sandbox
from supervisor.reader import Reader
from supervisor.records import RunRecord, RunState, TaskState
from supervisor.reload import plan_reload
from supervisor.requests import Requests
from supervisor.runs import ActiveRun, RecentOutcomes, Waiter, apply_result, outcome_of
from supervisor.schedule import ScheduleHeap, retry_delay
from supervisor.scheduler import FIRE, Scheduler
from supervisor.spool import Spool, spool_folder
from supervisor.statedir import secure_state
from supervisor.store import open_store, pool_options
from supervisor.store.urls import has_password, redact_url
from supervisor.uidclaim import claim_uids
from supervisor.writer import BatchWriter
from workers.logs import setup_logging
from workers.scoreboard import Scoreboard

log = logging.getLogger(__name__)

TICK_S = 0.5  # maintenance cadence: heartbeats, respawns, overdue runs, shutdown progress
OVERDUE_SLACK_S = 30.0  # beyond timeout + kill grace, a run's worker is presumed hung
IDEMPOTENCY_WINDOW_S = 24 * 3600.0
RECV_BATCH = 256  # worker messages taken per loop turn, so no socket starves another
RETRY = "retry"  # schedule heap entry of a run waiting for its next attempt
POISON_LOSSES = 2  # a run whose attempts took down this many workers is not run again
EXIT_LEASE_LOST = 6  # the store's lease was lost while running: another supervisor may act
ALERT_CLOSE_S = 5.0  # at exit, how long the alert sender may go on delivering what is due


class Phase(Enum):
    RUNNING = "running"
    DRAINING = "draining"  # no new runs; in-flight ones may finish within the grace period
    KILLING = "killing"  # grace over: workers were told to kill their runs
    DONE = "done"


class Supervisor:
    """Build with a validated :class:`Config`, then call :meth:`run` (blocks until stopped).

    ``overrides`` are the command-line settings, re-applied when SIGHUP reloads the file.
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
        self.settings = config.supervisor
        self._overrides = dict(overrides or {})
        self._clock = clock
        self.instance_id = events.new_id()[:12]
        self.started_at = clock()
        self.phase = Phase.RUNNING
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "runs_accepted", "runs_finished", "runs_succeeded", "runs_failed",
                "retries_scheduled", "busy_rejections", "bad_worker_messages", "stale_results",
                "worker_deaths", "reloads", "reloads_rejected", "fires_refused",
                "refreshes_coalesced",
            ),
            0,
        )  # fmt: skip
        self.runs: dict[str, ActiveRun] = {}
        self.input_bytes = 0  # of the inputs of self.runs: bounded by queue_max_bytes
        self.ready: deque[str] = deque()
        self.heap: ScheduleHeap[tuple[str, str]] = ScheduleHeap()
        self.outcomes = RecentOutcomes()
        self.metrics = RunMetrics()
        self._barrier: deque[tuple[int, Callable[[], None]]] = deque()
        self._awaiting_durable = 0  # accepted runs whose queued row is not committed yet
        self.idempotency = IdempotencyKeys(IDEMPOTENCY_WINDOW_S)
        self._shutdown_deadline = float("inf")
        self._next_tick = 0.0
        self._sentinels: set[int] = set()
        self._http_fd: int | None = None
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="actor-supervisor-"))
        mark_owned(self._runtime_dir)  # so a start-up after a SIGKILL knows it is a leftover
        self._rng = random.Random()
        self._standby = standby
        self._refused_fires: set[str] = set()
        self.exit_code = 0
        self.notify = Notifier()  # systemd: READY=1, STOPPING=1, WATCHDOG=1, STATUS=
        self._store_degraded = False

    # --- start-up (before the loop; the sandbox check forks, so it runs before any thread) ----

    def _prepare(self) -> None:
        s = self.settings
        self._warn_password_on_command_line()
        try:
            secure_state(self.config)
            self._control_endpoint = control_endpoint(self.config)
            self._control_curve = server_keys(self.config)
        except ConfigError as exc:
            raise StartupError(str(exc)) from exc
        except OSError as exc:
            raise StartupError(f"cannot make the state folder private: {exc}") from exc
        self.sandbox = prepare_sandbox(self.config)
        if (warning := check_pool_memory(s)) is not None:
            log.warning(warning, extra={"event": "pool_memory"})
        self.store = open_store(
            s.database,
            base_dir=self.config.base_dir,
            sqlite_synchronous=s.sqlite_synchronous,
            pool=pool_options(s),  # waits up to database_wait_s for a PostgreSQL server
        )
        if s.migrate:
            applied = self.store.migrate()
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        self.lease = open_lease(
            self.store, s.database, instance=self.instance_id, ttl_s=s.lease_ttl_s
        )
        self.epoch = acquire_lease(self.lease, standby=self._standby)  # before reading state
        # Once active (a standby waits for the lease first): our runs' uids, and no one else's.
        self.uid_claim = claim_uids(self.sandbox.run_uids)
        clean_leftovers()
        folder = spool_folder(s.spool_dir, self.config.base_dir)
        self.dead_letters = DeadLetters(dead_letter_path(folder))
        self.spool = Spool(folder, dead_letters=self.dead_letters)
        self.spool.drain(self.store, give_up_s=s.database_wait_s)  # before reading any state
        self._stored_states: dict[str, TaskState] = self.store.load_task_states()
        unfinished = self.store.unfinished_runs(before_epoch=self.epoch)
        since = self._clock() - IDEMPOTENCY_WINDOW_S
        for (name, key), run_id in self.store.idempotency_keys(since).items():
            self.idempotency.add(name, key, run_id, self._clock(), None)
        self.actors: dict[str, ActorRuntime] = build_actors(self.config.actors, self._stored_states)
        self.writer = BatchWriter(
            self.store,
            batch_size=s.batch_size,
            max_age_s=s.batch_max_age_ms / 1000,
            spool=self.spool,  # the writer owns and closes it from here on
            epoch=self.epoch,
            dead_letters=self.dead_letters,
        )
        self._unfinished = unfinished
        self._prepare_alerts()
        self.reader = Reader()  # reads the loop must not wait for (an actor's code)
        cache = make_cache()
        mark_owned(cache)
        self.codebook = CodeBook(
            store=self.store, writer=self.writer, reader=self.reader, cache=cache,
            actors=lambda: self.actors, on_ready=self._dispatch, clock=self._clock,
        )  # fmt: skip
        self.codebook.startup()  # hash every script, record what changed: before the loop
        self.breaker = Breaker(self.writer, self.heap, self._clock)
        self.scheduler = Scheduler(self.heap, self.writer, self.accept, self.has_room)
        self.requests = Requests(self)
        self.http = HttpSide.prepare(self.config)  # refuses a bad listen address before workers

    def _prepare_alerts(self) -> None:
        """Hook alerts into the writer: events in, outbox rows out in the same transaction,
        and each row, once durable, to the sender (which also takes over rows left pending)."""
        self.sender: AlertSender | None = None
        if not self.config.alerts:
            return
        s = self.settings
        book = AlertBook(
            self.config.alerts, repeat_s=s.alert_repeat_s, public_url=s.public_url,
            instance_id=self.instance_id, actors=self.actors.get, clock=self._clock,
        )  # fmt: skip
        env = {name: os.environ[name] for name in s.env_allow if name in os.environ}
        self.sender = AlertSender(
            self.config.alerts, self.store, run_as=self.sandbox.run_as, env=env, clock=self._clock
        )
        self.sender.adopt(self.store.pending_alerts())
        self.writer.observe = book.observe
        self.writer.on_commit = self.sender.offer

    def _watch_store(self) -> None:
        """``store_degraded``/``store_recovered`` events (and alerts) as the writer flips."""
        degraded = self.writer.stats().degraded
        if degraded != self._store_degraded:
            self._store_degraded = degraded
            stats = self.writer.stats()
            self.writer.put(events.supervisor_event(
                "store_degraded" if degraded else "store_recovered", self.instance_id,
                store=self.store.description, last_error=stats.last_error,
                spool_depth=stats.spool_depth,
            ))  # fmt: skip

    def _warn_password_on_command_line(self) -> None:
        """Any local user, scripts included, can read a process's command line in /proc."""
        url = self._overrides.get("database")
        if url and has_password(url):
            log.warning(
                "--database %s carries a password, which every local user can read in this "
                "process's command line; pass it through ACTOR_SUPERVISOR_DATABASE, a password "
                "file or PGPASSFILE instead",
                redact_url(url),
            )

    def _open_sockets(self) -> None:
        self._ctx: zmq.Context[Any] = zmq.Context()
        self.control = ControlServer(self._ctx, self._control_endpoint, self._control_curve)
        self._workers = self._ctx.socket(zmq.ROUTER)
        self._workers.setsockopt(zmq.LINGER, 0)
        self._workers.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a dead worker is an error, not silence
        self._workers.setsockopt(zmq.SNDHWM, 0)
        self._workers.setsockopt(zmq.RCVHWM, 0)
        self._worker_endpoint = f"ipc://{self._runtime_dir}/workers.sock"
        self._workers.bind(self._worker_endpoint)
        self._signal_r, self._signal_w = socket.socketpair()
        self._signal_r.setblocking(False)
        self._signal_w.setblocking(False)
        self._poller = zmq.Poller()
        self._poller.register(self.control.socket, zmq.POLLIN)
        self._poller.register(self._workers, zmq.POLLIN)
        self._poller.register(self.writer.wakeup_fd(), zmq.POLLIN)
        self._poller.register(self.reader.wakeup_fd(), zmq.POLLIN)
        self._poller.register(self._signal_r.fileno(), zmq.POLLIN)

    def _install_signals(self) -> None:
        """Handlers do nothing; the C-level handler writes the signal number to our pipe."""
        signal.set_wakeup_fd(self._signal_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, _ignore_signal)

    def _start_workers(self) -> None:
        self.scoreboard = Scoreboard.create(self.settings.workers)
        self.pool = WorkerPool(
            size=self.settings.workers,
            capacity=self.settings.concurrency,
            endpoint=self._worker_endpoint,
            scoreboard=self.scoreboard,
            sandbox=self.sandbox,
            heartbeat_timeout_s=self.settings.heartbeat_timeout_s,
            log_level=self.settings.log_level,
            log_format=self.settings.log_format,
        )
        self.pool.start()
        self._sync_sentinels()

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        """Run until a stop signal has been handled; return the process exit code."""
        try:
            self._prepare()
        except BaseException:
            if (claim := getattr(self, "uid_claim", None)) is not None:
                claim.release()
            if hasattr(self, "lease"):
                self.lease.release()
            if hasattr(self, "store"):
                self.store.close()
            raise
        self.lease.start_keeping()
        self.writer.start()
        if self.sender is not None:
            self.sender.start()
        self.reader.start()
        try:
            self._open_sockets()
            self._install_signals()
            self._start_workers()
            self.http.start()
            self._watch_http()
            self._restore()
            log.info(
                "supervisor started",
                extra={
                    "control": self._control_endpoint,
                    "workers": self.settings.workers,
                    "concurrency": self.settings.concurrency,
                    "actors": len(self.actors),
                    "store": self.store.description,
                },
            )
            self.notify.ready(self._status_line())
            self._loop()
        finally:
            self._teardown()
        return self.exit_code

    def _loop(self) -> None:
        while self.phase is not Phase.DONE:
            for item, _ in self._poller.poll(self._poll_timeout_ms(self._clock())):
                if item is self._workers:
                    self._on_worker_messages()
                elif item is self.control.socket:
                    self._on_requests()
                elif item == self._signal_r.fileno():
                    self._on_signals()
                elif item == self.writer.wakeup_fd():
                    self._on_commits()
                elif item == self.reader.wakeup_fd():
                    self.reader.drain()
                elif item == self._http_fd:
                    self.http.on_exit()
                    self._watch_http()
                elif isinstance(item, int):
                    self._on_worker_exit(item)
            if self.phase is Phase.RUNNING:
                self._fire_due(self._clock())
                self._dispatch()
            if time.monotonic() >= self._next_tick:
                self._next_tick = time.monotonic() + TICK_S
                self._maintain()
            self.notify.tick()  # from the loop itself: a hung loop stops pinging the watchdog

    def _poll_timeout_ms(self, now: float) -> int:
        cap_ms = max(1, int((self._next_tick - time.monotonic()) * 1000))
        if (ping_in := self.notify.next_ping_in()) is not None:  # a WatchdogSec under a tick
            cap_ms = min(cap_ms, max(1, int(ping_in * 1000) + 1))
        if self.phase is not Phase.RUNNING:
            return cap_ms
        return self.heap.timeout_ms(now, cap_ms)

    # --- inputs ------------------------------------------------------------------------------

    def _on_signals(self) -> None:
        try:
            data = self._signal_r.recv(256)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._begin_shutdown(signal.Signals(signum).name)
            elif signum == signal.SIGHUP and self.phase is Phase.RUNNING:
                self._reload()

    def _on_commits(self) -> None:
        self.writer.drain_wakeups()
        self._take_refused_fires()
        committed = self.writer.committed
        while self._barrier and self._barrier[0][0] <= committed:
            _, callback = self._barrier.popleft()
            callback()

    def _after_commit(self, seq: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` once every record up to ``seq`` is durable."""
        if seq <= self.writer.committed:
            callback()
        else:
            self._barrier.append((seq, callback))

    def _on_worker_messages(self) -> None:
        for _ in range(RECV_BATCH):
            if not has_message(self._workers):
                return
            frames = self._workers.recv_multipart(zmq.NOBLOCK)
            handle = self.pool.by_identity(frames[0]) if len(frames) == 2 else None
            if handle is None:
                self.counters["bad_worker_messages"] += 1
                continue
            try:
                message = decode(frames[1], WORKER_TO_SUPERVISOR)
            except ProtocolError as exc:
                self.counters["bad_worker_messages"] += 1
                log.warning("malformed message from worker %s: %s", handle.worker_id, exc)
                continue
            if isinstance(message, Result):
                self._on_result(handle.worker_id, message)
            elif isinstance(message, Hello):
                self.pool.on_hello(frames[0])
                log.info("worker %s ready", handle.worker_id, extra={"pid": message.pid})

    def _on_requests(self) -> None:
        for waiter, message in self.control.requests():
            try:
                self.requests.handle(waiter, message)
            except Exception:  # a bug must cost one request, never the supervisor
                log.exception("internal error handling a %s request", message.type)
                self.control.reply_error(
                    waiter, "internal_error", "the supervisor failed this request"
                )

    # --- what requests and schedules ask of the run book -------------------------------------

    @property
    def accepting(self) -> bool:
        return self.phase is Phase.RUNNING

    def waiting(self) -> int:
        """Accepted runs not yet handed to a worker (the bounded ready queue)."""
        return len(self.ready) + self._awaiting_durable

    def has_room(self, input_bytes: int = 0) -> bool:
        """Room for one more run (with an input of ``input_bytes``): bounded in count and in
        the bytes of the inputs held by every run not finished yet."""
        return (
            self.waiting() < self.settings.queue_size
            and self.input_bytes + input_bytes <= self.settings.queue_max_bytes
        )

    def _forget(self, run_id: str) -> None:
        active = self.runs.pop(run_id, None)
        if active is not None:
            self.input_bytes -= len(active.record.input_json)

    def idempotent_run(self, actor: str, key: str) -> tuple[str, bytes | None] | None:
        """The earlier run of this key and its input digest (None: not known)."""
        return self.idempotency.find(actor, key)

    def all_counters(self) -> dict[str, int]:
        return {
            **self.counters,
            "bad_requests": self.control.bad_requests,
            "replies_dropped": self.control.replies_dropped,
            "fires_dropped": self.scheduler.dropped,
            "fires_skipped": self.scheduler.skipped,
        }

    # --- the life of a run -------------------------------------------------------------------

    def accept(
        self,
        actor: ActorRuntime,
        *,
        input_value: Any,
        input_json: str | None = None,
        trigger: str,
        waiter: Waiter | None = None,
        scheduled_for: float | None = None,
        idempotency_key: str | None = None,
    ) -> ActiveRun:
        """Record a new run as queued; once durable, acknowledge it and make it ready.

        ``input_json``: ``input_value`` already encoded (and checked) by the caller."""
        now = self._clock()
        run_id = events.new_id()
        if input_json is None:
            input_json = orjson.dumps(input_value).decode()
        record = RunRecord(
            run_id=run_id,
            attempt=1,
            actor=actor.name,
            correlation_id=run_id,
            trigger=trigger,
            input_json=input_json,
            queued_at=now,
            scheduled_for=scheduled_for,
            code_sha256=actor.code_sha256,
            idempotency_key=idempotency_key,
        )
        active = ActiveRun(record=record, waiters=[waiter] if waiter else [])
        self.runs[run_id] = active
        self.input_bytes += len(input_json)
        actor.active.add(run_id)
        if idempotency_key is not None:
            self.idempotency.add(actor.name, idempotency_key, run_id, now, digest(input_json))
        self.counters["runs_accepted"] += 1
        self._awaiting_durable += 1
        self.writer.put(record)
        seq = self.writer.put(events.run_queued(record))
        self._after_commit(seq, lambda: self._on_durable(active))
        return active

    def _on_durable(self, active: ActiveRun) -> None:
        self._awaiting_durable -= 1
        if active.run_id in self._refused_fires:
            self._drop_refused_fire(active)
            return
        waiters = active.waiters  # a run refused at dispatch hands them on to its result
        if self.runs.get(active.run_id) is active and active.record.status == RunState.QUEUED:
            if self.phase is Phase.RUNNING:
                self.ready.append(active.run_id)
                self._dispatch()  # before answering: the run's latency matters more
            else:
                self._tell_waiters_stopping(active)
                waiters = []
        for waiter in waiters:
            self.control.reply(
                waiter, "accepted", {"run_id": active.run_id, "actor": active.record.actor}
            )
        active.waiters = [w for w in active.waiters if w.wants_result]

    def _dispatch(self) -> None:
        parked: list[str] = []  # runs of actors whose code is being reloaded: they wait for it
        while self.ready:
            handle = self.pool.pick()
            if handle is None:
                break
            active = self.runs.get(self.ready.popleft())
            if active is None or active.record.status != RunState.QUEUED:
                continue
            actor = self.actors.get(active.record.actor)
            if actor is None:
                self._complete_attempt(
                    active,
                    self._lost(
                        active.record, Reason.UNKNOWN_ACTOR, "the actor is no longer configured"
                    ),
                )
                continue
            if self.codebook.loading(actor):
                parked.append(active.run_id)
                continue
            cfg, code = actor.config, self.codebook.for_run(actor)
            record = replace(
                active.record,
                code_sha256=code.sha256,
                code_history_id=code.history_id,
                code_source=code.source,
            )
            if code.refused is not None:
                self._complete_attempt(
                    active, self._lost(record, Reason.FILE_MISSING, code.refused)
                )
                continue
            record = replace(
                record,
                status=RunState.RUNNING,
                worker_id=handle.worker_id,
                started_at=self._clock(),
            )
            message = Run(
                run_id=record.run_id,
                attempt=record.attempt,
                actor=cfg.name,
                script=code.script,
                cwd=code.cwd,
                mode=cfg.mode,
                input_json=record.input_json,
                env=cfg.env,
                limits=cfg.limits,
                timeout_s=cfg.timeout_s,
                code_sha256=code.sha256,
                network=cfg.network,
            )
            try:
                self._workers.send_multipart([handle.identity, orjson.dumps(message)], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                self.ready.appendleft(record.run_id)
                self.pool.kill(handle, f"unreachable: {exc}")
                continue
            handle.in_flight.add(record.run_id)
            active.record = record
            active.worker_id = handle.worker_id
            active.overdue_at = (
                time.monotonic() + cfg.timeout_s + self.settings.kill_grace_s + OVERDUE_SLACK_S
            )
            self.writer.put(record)
            self.writer.put(events.run_started(record))
        self.ready.extendleft(reversed(parked))

    def _on_result(self, worker_id: str, result: Result) -> None:
        handle = self.pool.by_identity(worker_id.encode())
        if handle is not None:
            handle.in_flight.discard(result.run_id)
        active = self.runs.get(result.run_id)
        if (
            active is None
            or active.record.attempt != result.attempt
            or active.worker_id != worker_id
            or active.record.status != RunState.RUNNING
        ):
            self.counters["stale_results"] += 1
            log.warning(
                "ignored a result for run %s attempt %d from %s: not in flight there",
                result.run_id, result.attempt, worker_id,
            )  # fmt: skip
            return
        record = apply_result(active.record, result)
        if self.phase is Phase.KILLING and result.reason == Reason.SHUTDOWN:
            record = replace(record, error="killed: the shutdown grace period ran out")
        self._complete_attempt(active, record, output=result.output)

    def _lost(self, record: RunRecord, reason: Reason, error: str) -> RunRecord:
        """The attempt's row when it ended without a result from a worker."""
        now = self._clock()
        return replace(
            record,
            status=Status.FAILED_PERMANENT
            if reason in (Reason.UNKNOWN_ACTOR, Reason.FILE_MISSING, Reason.POISON)
            else Status.FAILED_RETRYABLE,
            reason=reason,
            error=error,
            finished_at=now,
            duration_ms=(now - record.started_at) * 1000 if record.started_at else None,
        )

    def _complete_attempt(self, active: ActiveRun, record: RunRecord, output: Any = None) -> None:
        """Record an attempt's outcome; then either schedule the next attempt or finish."""
        active.record = record
        active.worker_id = None
        actor = self.actors.get(record.actor)
        retry_at = self._retry_time(actor, record, active.worker_losses)
        self.writer.put(record)
        seq = self.writer.put(events.run_finished(record, will_retry=retry_at is not None))
        self.metrics.attempt_finished(
            record.actor, record.status, record.reason, record.duration_ms, self._clock()
        )
        self._log_attempt(record, retry_at)
        if retry_at is not None:
            self._schedule_retry(active, retry_at)
            return
        self._forget(record.run_id)
        outcome = outcome_of(record, output)
        size = len(record.output_json or "") + len(record.stderr_tail) + RecentOutcomes.OVERHEAD
        self.outcomes.add(outcome, size)
        self.counters["runs_finished"] += 1
        self.counters["runs_succeeded" if record.status == Status.SUCCEEDED else "runs_failed"] += 1
        waiters, active.waiters = active.waiters, []
        self._after_commit(seq, lambda: self._deliver(waiters, outcome))
        if actor is not None:
            actor.active.discard(record.run_id)
            self.breaker.account(actor, record)
            if self.phase is Phase.RUNNING:
                self.scheduler.after_final(actor)

    def _deliver(self, waiters: list[Waiter], outcome: dict[str, Any]) -> None:
        for waiter in waiters:
            self.control.reply(waiter, "result", outcome)

    def _retry_time(
        self, actor: ActorRuntime | None, record: RunRecord, worker_losses: int
    ) -> float | None:
        """When the next attempt is due, or None. Attempts lost with their worker are free:
        the run is not to blame for a worker that another run took down."""
        if actor is None or record.status != Status.FAILED_RETRYABLE:
            return None
        cfg = actor.config
        if record.attempt - worker_losses > cfg.max_retries:
            return None
        delay = retry_delay(
            record.attempt, cfg.retry_backoff_s, cfg.retry_backoff_max_s, cfg.retry_jitter,
            self._rng,
        )  # fmt: skip
        return self._clock() + delay

    def _schedule_retry(self, active: ActiveRun, retry_at: float) -> None:
        """The next attempt is a durable queued row due at ``retry_at``: it survives restarts."""
        previous = active.record
        record = RunRecord(
            run_id=previous.run_id,
            attempt=previous.attempt + 1,
            actor=previous.actor,
            correlation_id=previous.correlation_id,
            trigger="retry",
            input_json=previous.input_json,
            queued_at=self._clock(),
            scheduled_for=retry_at,
            code_sha256=previous.code_sha256,
            idempotency_key=previous.idempotency_key,
        )
        active.record = record
        self.counters["retries_scheduled"] += 1
        self.metrics.retry_scheduled(record.actor)
        self.writer.put(record)
        self.writer.put(events.run_queued(record))
        self.heap.push((RETRY, record.run_id), retry_at)
        if self.phase is not Phase.RUNNING:
            self._tell_waiters_stopping(active)

    def _tell_waiters_stopping(self, active: ActiveRun) -> None:
        for waiter in active.waiters:
            self.control.reply_error(
                waiter,
                "shutting_down",
                f"run {active.run_id} stays queued (attempt {active.record.attempt}) and "
                "will run when the supervisor starts again",
            )
        active.waiters = []

    def _log_attempt(self, record: RunRecord, retry_at: float | None) -> None:
        level = logging.INFO if record.status == Status.SUCCEEDED else logging.WARNING
        extra: dict[str, Any] = {
            "actor": record.actor,
            "run_id": record.run_id,
            "attempt": record.attempt,
            "status": record.status,
            "duration_ms": round(record.duration_ms or 0.0, 1),
        }
        if record.reason:
            extra["reason"] = record.reason
            extra["error"] = record.error
        if retry_at is not None:
            extra["retry_in_s"] = round(retry_at - self._clock(), 2)
        log.log(level, "run %s", record.status, extra=extra)

    # --- restart recovery and the heap -------------------------------------------------------

    def _restore(self) -> None:
        """Recover the previous supervisor's unfinished runs, then seed the schedule heap."""
        now = self._clock()
        for record in self._unfinished:
            self._recover(record, now)
        self._unfinished = []
        for actor in self.actors.values():
            self.writer.put(actor.record())
            self.scheduler.seed(actor, now)
            self.breaker.restore(actor)
        self.writer.put(
            events.supervisor_event(
                "supervisor_started", self.instance_id, pid=os.getpid(), actors=sorted(self.actors)
            )
        )

    def _recover(self, record: RunRecord, now: float) -> None:
        """A queued attempt never started: queue it again. A running one was lost with us."""
        active = ActiveRun(record=record)
        self.runs[record.run_id] = active
        self.input_bytes += len(record.input_json)
        if (actor := self.actors.get(record.actor)) is not None:
            actor.active.add(record.run_id)
        if record.status == RunState.QUEUED:
            due = record.scheduled_for if record.scheduled_for is not None else now
            self.heap.push((RETRY, record.run_id), max(due, now))
            log.info("re-queued run %s attempt %d from before the restart",
                     record.run_id, record.attempt)  # fmt: skip
            return
        lost = self._lost(
            record, Reason.SUPERVISOR_LOST, "the supervisor stopped while the run was in flight"
        )
        self._complete_attempt(active, lost)

    def _fire_due(self, now: float) -> None:
        for (kind, name), due in self.heap.pop_due(now):
            if kind == RETRY:
                active = self.runs.get(name)
                if active is not None and active.record.status == RunState.QUEUED:
                    self.ready.append(name)
            elif (actor := self.actors.get(name)) is None:
                continue
            elif kind == FIRE:
                self.metrics.fired(due, now)
                self.scheduler.fire(actor, due, now)
            elif kind == PROBE and actor.state.is_paused:
                log.info("actor %s: half-open probe run", name, extra={"actor": name})
                probe = self.accept(actor, input_value=actor.config.input, trigger=PROBE)
                self.breaker.probe_accepted(probe.run_id)

    # --- workers -----------------------------------------------------------------------------

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
        self.counters["worker_deaths"] += 1
        expected = self.phase is not Phase.RUNNING and not gone.lost_runs
        (log.info if expected else log.error)(
            "worker %s %s", gone.handle.worker_id, gone.description,
            extra={"lost_runs": len(gone.lost_runs)},
        )  # fmt: skip
        for run_id in gone.lost_runs:
            active = self.runs.get(run_id)
            if active is not None and active.worker_id == gone.handle.worker_id:
                self._complete_attempt(active, self._worker_lost(active, gone.description))

    def _worker_lost(self, active: ActiveRun, description: str) -> RunRecord:
        """The attempt's row when its worker died under it.

        Every run in flight there is a suspect: it is retried without counting against its
        actor's retries or breaker, until its attempts have taken down POISON_LOSSES workers.
        """
        if self.phase is Phase.KILLING:
            return self._lost(active.record, Reason.SHUTDOWN, f"worker {description}")
        active.worker_losses += 1
        if active.worker_losses < POISON_LOSSES:
            return self._lost(active.record, Reason.WORKER_LOST, f"worker {description}")
        return self._lost(
            active.record,
            Reason.POISON,
            f"worker {description}; its attempts took down {active.worker_losses} workers, "
            "so it is not run again",
        )

    def _take_refused_fires(self) -> None:
        for run_id in self.store.refused.take():
            active = self.runs.get(run_id)
            if active is not None and active.record.status == RunState.QUEUED:
                self._refused_fires.add(run_id)
            else:  # written through the spool after it ran: the store keeps the other copy
                log.error("fire %s was refused by the store after it ran", run_id)

    def _drop_refused_fire(self, active: ActiveRun) -> None:
        """Another supervisor (an older or newer epoch) already claimed this fire."""
        self._refused_fires.discard(active.run_id)
        self._forget(active.run_id)
        self.counters["fires_refused"] += 1
        record = active.record
        log.warning(
            "actor %s: fire at %s already claimed in the store; not running it again",
            record.actor, record.scheduled_for,
            extra={"actor": record.actor, "run_id": record.run_id},
        )  # fmt: skip
        if (actor := self.actors.get(record.actor)) is not None:
            actor.active.discard(record.run_id)
            if self.phase is Phase.RUNNING:
                self.scheduler.after_final(actor)

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

    def _maintain(self) -> None:
        self._check_lease()
        running = self.phase is Phase.RUNNING
        self.pool.maintain(respawn=running)
        self._sync_sentinels()
        self.http.maintain(respawn=running)
        self._watch_http()
        now = time.monotonic()
        for active in list(self.runs.values()):
            if active.worker_id is not None and now > active.overdue_at:
                handle = self.pool.by_identity(active.worker_id.encode())
                if handle is not None and not handle.killed_by_us:
                    self.pool.kill(
                        handle,
                        f"run {active.run_id} is {OVERDUE_SLACK_S:.0f}s past its timeout "
                        "and kill grace",
                    )
        self.idempotency.expire(self._clock())
        self.scheduler.summarize_skips()
        self._watch_store()
        if not running:
            self._advance_shutdown(now)
        if running:
            self.notify.status(self._status_line())

    def _status_line(self) -> str:
        """systemd's STATUS=: what `systemctl status` shows."""
        ready = sum(1 for handle in self.pool.handles() if handle.ready)
        line = (
            f"{ready}/{self.settings.workers} workers ready, {len(self._in_flight())} run(s) "
            f"in flight, {self.waiting()} waiting"
        )
        return line + (", store DEGRADED (spooling)" if self._store_degraded else "")

    def _watch_http(self) -> None:
        """Keep the HTTP process's sentinel (a pidfd) registered in the poller while it runs."""
        fd = self.http.sentinel()
        if fd != self._http_fd:
            if self._http_fd is not None:
                self._poller.unregister(self._http_fd)
            if fd is not None:
                self._poller.register(fd, zmq.POLLIN)
            self._http_fd = fd

    # --- configuration reload (SIGHUP) -------------------------------------------------------

    def _reload(self) -> None:
        """Apply a changed configuration file; an invalid one is rejected, the old one stays."""
        try:
            new = load_config(self.config.path, overrides=self._overrides, environ=os.environ)
            check_reloaded_scripts(self.config, new, self.sandbox)
        except (ConfigError, StartupError) as exc:
            self.counters["reloads_rejected"] += 1
            log.error("SIGHUP: configuration rejected, keeping the running one: %s", exc)
            self.writer.put(events.supervisor_event(
                "config_rejected", self.instance_id, error=str(exc)
            ))  # fmt: skip
            return
        plan = plan_reload(self.config, new)
        now = self._clock()
        for name in plan.removed:
            self.scheduler.forget(name)
            self.heap.remove((PROBE, name))
            self.actors.pop(name)
        for name in (*plan.added, *plan.changed):
            cfg = new.actors[name]
            actor = self.actors.get(name)
            before = actor.config if actor is not None else None
            if actor is None:
                state = self._stored_states.get(name) or TaskState(actor=name, updated_at=now)
                code = ActorCode(home=str(cfg.script.parent))
                actor = ActorRuntime(config=cfg, state=state, code=code)
                self.actors[name] = actor
            else:
                actor.config = cfg
            self.codebook.reconfigure(actor, before)
            self.writer.put(actor.record())
            if name in plan.added:
                self.scheduler.seed(actor, now)
            elif name in plan.rescheduled:
                self.scheduler.reseed(actor, now)
        if new.alerts != self.config.alerts:
            log.warning("SIGHUP: [[alerts]] changed; the new entries apply at the next restart")
        self.config = replace(new, supervisor=plan.settings, alerts=self.config.alerts)
        self.settings = plan.settings
        self.pool.heartbeat_timeout_s = plan.settings.heartbeat_timeout_s
        setup_logging(plan.settings.log_level, plan.settings.log_format)
        self.counters["reloads"] += 1
        log.info(
            "SIGHUP: configuration reloaded",
            extra={"added": plan.added, "removed": plan.removed, "changed": plan.changed,
                   "settings": plan.applied_settings},
        )  # fmt: skip
        if plan.restart_needed:
            log.warning("SIGHUP: these settings changed but need a restart to apply: %s",
                        ", ".join(plan.restart_needed))  # fmt: skip
        self.writer.put(events.supervisor_event(
            "config_reloaded", self.instance_id, added=list(plan.added),
            removed=list(plan.removed), changed=list(plan.changed),
            restart_needed=list(plan.restart_needed),
        ))  # fmt: skip

    # --- shutdown ----------------------------------------------------------------------------

    def _in_flight(self) -> list[ActiveRun]:
        return [a for a in self.runs.values() if a.worker_id is not None]

    def _begin_shutdown(self, why: str) -> None:
        if self.phase is Phase.RUNNING:
            grace = self.settings.shutdown_grace_s
            log.info("%s: stopping; %d run(s) in flight get %.1fs to finish",
                     why, len(self._in_flight()), grace)  # fmt: skip
            self.phase = Phase.DRAINING
            self._shutdown_deadline = time.monotonic() + grace
            self.notify.stopping(
                f"stopping ({why}): {len(self._in_flight())} run(s) get {grace:.0f}s to finish"
            )
            ready = set(self.ready)
            for active in self.runs.values():  # ready, or waiting in the heap for a retry
                if active.run_id in ready or (RETRY, active.run_id) in self.heap:
                    self._tell_waiters_stopping(active)
            self.ready.clear()
        else:
            log.info("%s again: no more grace, killing runs in flight", why)
            self._shutdown_deadline = time.monotonic()
        self._next_tick = 0.0  # act now, not at the next tick

    def _advance_shutdown(self, now: float) -> None:
        in_flight = self._in_flight()
        if not in_flight:
            self.phase = Phase.DONE
        elif self.phase is Phase.DRAINING and now >= self._shutdown_deadline:
            log.warning("grace period over: killing %d run(s) in flight", len(in_flight))
            self.phase = Phase.KILLING
            self._shutdown_deadline = now + self.settings.kill_grace_s + 5.0
            for handle in self.pool.handles():
                self._send_worker(handle.identity, Stop(kill=True))
        elif self.phase is Phase.KILLING and now >= self._shutdown_deadline:
            for active in in_flight:
                self._complete_attempt(active, self._lost(
                    active.record, Reason.SHUTDOWN, "no result after the kill; worker unresponsive"
                ))  # fmt: skip
            self.phase = Phase.DONE

    def _send_worker(self, identity: bytes, message: Stop) -> None:
        try:
            self._workers.send_multipart([identity, orjson.dumps(message)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("could not reach worker %s: %s", identity, exc)

    def _teardown(self) -> None:
        """Stop workers, persist state, flush the writer, answer the last waiters, close up."""
        if hasattr(self, "http"):
            self.http.stop()  # first: it talks to the control socket closed below
        if hasattr(self, "codebook"):
            self.reader.close()
            shutil.rmtree(self.codebook.cache, ignore_errors=True)
        pool = getattr(self, "pool", None)
        if pool is not None:
            for handle in pool.handles():
                self._send_worker(handle.identity, Stop(kill=True))
            pool.stop_all(timeout=self.settings.kill_grace_s + 5.0)
        writer = getattr(self, "writer", None)
        if writer is not None:
            for actor in getattr(self, "actors", {}).values():
                writer.put(actor.state)
            writer.put(
                events.supervisor_event(
                    "supervisor_stopped", self.instance_id, counters=dict(self.counters)
                )
            )
            if not writer.close(timeout=60.0):
                log.error("the store writer could not flush everything before exit")
            if getattr(self, "sender", None) is not None:
                assert self.sender is not None
                self.sender.close(timeout=ALERT_CLOSE_S)  # what it cannot send stays pending
            if hasattr(self, "control"):
                self._on_commits()
        if hasattr(self, "_signal_r"):
            signal.set_wakeup_fd(-1)
            self._signal_r.close()
            self._signal_w.close()
        if hasattr(self, "control"):
            self.control.close()
        if hasattr(self, "_workers"):
            self._workers.close(linger=0)
        if hasattr(self, "_ctx"):
            self._ctx.term()
        if hasattr(self, "scoreboard"):
            self.scoreboard.close()
        if hasattr(self, "store"):
            self.store.close()
        if (claim := getattr(self, "uid_claim", None)) is not None:
            claim.release()  # our runs are gone: a standby may hand out these uids
        if hasattr(self, "lease"):
            self.lease.release()  # last: a standby must not start before our writes are done
        shutil.rmtree(self._runtime_dir, ignore_errors=True)
        self.notify.close()
        log.info("supervisor stopped", extra=dict(self.counters))


def _ignore_signal(signum: int, frame: object) -> None:
    """The wake-up fd carries the signal; the loop handles it on the main thread."""
