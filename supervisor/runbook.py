"""The run book: the life of every run, as a plain object with its clock and sink injected.

Accept, the commit barrier ("durable"), which run goes to which worker next, results, retries,
lost attempts and poison, restart recovery, overdue detection, idempotency, refused fires and
the drain/kill bookkeeping of shutdown all live here. Nothing here touches a socket, a process or
the database: the supervisor shell (:mod:`supervisor.core`) does that and calls in.

A run is durable once accepted: the client hears "accepted", and a worker gets the run, only
once its ``queued`` row is committed; a final outcome is committed before a client hears it. A
retryable failure becomes a new attempt: a queued row due after its backoff (it survives a restart).
"""

import contextlib
import functools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

import orjson

from protocol.messages import Result, Run
from protocol.outcomes import Reason, RunOutcome, RunStatus
from supervisor import events
from supervisor.actors import ActorRuntime
from supervisor.breaker import Breaker
from supervisor.heap import EntryKind, Key, ScheduleHeap
from supervisor.idempotency import IdempotencyKeys, digest
from supervisor.metrics import RunMetrics
from supervisor.records import RecordSink, RunRecord, Trigger, evolve
from supervisor.runs import (
    ActiveRun,
    AttemptLog,
    Code,
    Dispatched,
    RecentOutcomes,
    Replies,
    S,
    Waiter,
    Workers,
    apply_result,
    lost_attempt,
    next_attempt,
    outcome_of,
    retry_time,
)
from supervisor.scheduler import Scheduler
from supervisor.settings import SupervisorSettings

log = logging.getLogger(__name__)

OVERDUE_SLACK_S = 30.0  # beyond timeout + kill grace, a run's worker is presumed hung
IDEMPOTENCY_WINDOW_S = 24 * 3600.0
POISON_LOSSES = 2  # a run whose attempts took down this many workers is not run again
FIRE_BATCH = 32  # due entries popped per turn of the loop: see fire_due
KILL_WAIT_S = 5.0  # after the kill grace, how long a killed run's result may take to arrive
COUNTERS = (
    "runs_accepted", "runs_finished", "runs_succeeded", "runs_failed", "retries_scheduled",
    "busy_rejections", "bad_worker_messages", "stale_results", "worker_deaths", "reloads",
    "reloads_rejected", "fires_refused", "refreshes_coalesced",
)  # fmt: skip


class Phase(Enum):
    RUNNING = "running"
    DRAINING = "draining"  # no new runs; in-flight ones may finish within the grace period
    KILLING = "killing"  # grace over: workers were told to kill their runs
    DONE = "done"


class RunBook:
    """Every run between acceptance and its final outcome, and what happens to it next.

    ``clock`` is wall time (records, schedules); ``monotonic`` times overdue runs and shutdown.
    """

    def __init__(
        self,
        *,
        sink: RecordSink,
        replies: Replies,
        code: Code,
        actors: dict[str, ActorRuntime],
        settings: SupervisorSettings,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_ready: Callable[[], None] = lambda: None,
        epoch: int = 0,
    ) -> None:
        self.settings = settings  # replaced by a reload
        self.actors = actors  # shared with the shell, changed in place by a reload
        self.sink, self._replies, self._code = sink, replies, code
        self.clock, self._monotonic = clock, monotonic
        self._rng = rng or random.Random()
        self._on_ready = on_ready  # a run became ready: dispatch it before answering
        # The lease term, stamped on the rows made here: the writer would copy each row that
        # lacks it (a run's three rows, about 6 us each) only to stamp it.
        self._epoch = epoch
        self.phase = Phase.RUNNING
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.runs: dict[str, ActiveRun] = {}
        self.input_bytes = 0  # of the inputs of self.runs: bounded by queue_max_bytes
        self.ready: deque[str] = deque()
        self.heap: ScheduleHeap[Key] = ScheduleHeap()
        self.outcomes = RecentOutcomes()
        self.metrics = RunMetrics()
        self.attempt_log = AttemptLog(monotonic)
        self.idempotency = IdempotencyKeys(IDEMPOTENCY_WINDOW_S)
        self.breaker = Breaker(sink, self.heap, clock)
        self.scheduler = Scheduler(self.heap, sink, self.accept, self.has_room)
        self.shutdown_deadline = float("inf")  # monotonic
        self._barrier: deque[tuple[int, Callable[[], None]]] = deque()
        self._awaiting_durable = 0  # accepted runs whose queued row is not committed yet
        self._refused_fires: set[str] = set()
        self._cancels: set[str] = set()  # runs an operator cancelled: never retried
        # workflows (supervisor/workflows/): told of each final outcome once it is committed;
        # asked for the event metadata of a run recovered after a restart
        self.final_listeners: list[Callable[[RunRecord, ActiveRun], None]] = []
        self.recovered_metadata: Callable[[RunRecord], dict[str, Any]] = lambda record: {}

    # --- what requests and schedules ask ----------------------------------------------------

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

    def in_flight(self) -> list[ActiveRun]:
        return [a for a in self.runs.values() if a.worker_id is not None]

    # --- accept and the commit barrier ------------------------------------------------------

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
        correlation_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ActiveRun:
        """Record a new run as queued; once durable, acknowledge it and make it ready.

        ``input_json``: ``input_value`` already encoded (and checked) by the caller.
        ``metadata``: added to every event of the run (a workflow step's item and order)."""
        now = self.clock()
        run_id = events.new_id()
        if input_json is None:
            input_json = orjson.dumps(input_value).decode()
        record = RunRecord(
            run_id=run_id, attempt=1, actor=actor.name, correlation_id=correlation_id or run_id,
            trigger=trigger,
            input_json=input_json, queued_at=now, scheduled_for=scheduled_for,
            code_sha256=actor.code_sha256, idempotency_key=idempotency_key, epoch=self._epoch,
        )  # fmt: skip
        active = ActiveRun(record=record, waiters=[waiter] if waiter else [])
        if metadata:
            active.metadata = metadata
        self.runs[run_id] = active
        self.input_bytes += len(input_json)
        actor.active.add(run_id)
        if idempotency_key is not None:
            self.idempotency.add(actor.name, idempotency_key, run_id, now, digest(input_json))
        self.counters["runs_accepted"] += 1
        self.sink.put(record)
        seq = self.sink.put(events.run_queued(record, **active.metadata))
        if record.is_fire or self.phase is not Phase.RUNNING:
            # a fire the store may refuse (another supervisor claimed it) waits for its row
            self._awaiting_durable += 1
            self._after_commit(seq, lambda: self._on_durable(active))
        else:
            # ready at once: a free worker takes it in this turn, and its running row commits
            # with the queued one; the worker gets it only after that commit (dispatch)
            self.ready.append(run_id)
            told = list(active.waiters)  # a run refused at dispatch hands them on to its result
            self._after_commit(seq, lambda: self._acknowledge(active, told))
        return active

    def on_commits(self, refused: Iterable[str] = ()) -> None:
        """The sink committed more; ``refused``: fires the store turned down meanwhile."""
        self._take_refused_fires(refused)
        committed = self.sink.committed
        while self._barrier and self._barrier[0][0] <= committed:
            _, callback = self._barrier.popleft()
            callback()

    def after_commit(self, seq: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` once every record up to ``seq`` is durable (for workflows)."""
        self._after_commit(seq, callback)

    def _after_commit(self, seq: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` once every record up to ``seq`` is durable."""
        if seq <= self.sink.committed:
            callback()
        else:
            self._barrier.append((seq, callback))

    def _on_durable(self, active: ActiveRun) -> None:
        """A fire's (or a run accepted while stopping) queued row is committed."""
        self._awaiting_durable -= 1
        if active.run_id in self._refused_fires:
            self._drop_refused_fire(active)
            return
        told = active.waiters  # a run refused at dispatch hands them on to its result
        if self.phase is Phase.RUNNING and self._still_queued(active):
            self.ready.append(active.run_id)
            self._on_ready()
        self._acknowledge(active, told)

    def _still_queued(self, active: ActiveRun) -> bool:
        return self.runs.get(active.run_id) is active and active.record.status == RunStatus.QUEUED

    def _acknowledge(self, active: ActiveRun, told: list[Waiter]) -> None:
        """The run's queued row is committed: the clients ``told`` hear "accepted" -- or, if
        shutdown began meanwhile, that it stays queued for the next start."""
        active.acknowledged = True
        if self.phase is not Phase.RUNNING and self._still_queued(active):
            self._tell_waiters_stopping(active)  # (begin_shutdown emptied the ready queue)
            return
        for waiter in told:
            self._replies.reply(
                waiter, "accepted", {"run_id": active.run_id, "actor": active.record.actor}
            )
        active.waiters = [w for w in active.waiters if w.wants_result]

    def _take_refused_fires(self, refused: Iterable[str]) -> None:
        for run_id in refused:
            active = self.runs.get(run_id)
            if active is not None and active.record.status == RunStatus.QUEUED:
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

    def _forget(self, run_id: str) -> None:
        active = self.runs.pop(run_id, None)
        if active is not None:
            self.input_bytes -= len(active.record.input_json)

    # --- the schedule heap ------------------------------------------------------------------

    def fire_due(self, now: float) -> None:
        """Pop what is due: retries become ready, schedules fire, breaker probes run.

        At most :data:`FIRE_BATCH` a turn: the rest stay due, so the loop's next poll returns at
        once. Popping a burst of 1,000 fires in one turn would hold every run back until all
        1,000 queued rows were made and committed; in chunks, the first chunk's rows commit
        and go to free workers while the loop makes the next.
        """
        for (kind, name), due in self.heap.pop_due(now, FIRE_BATCH):
            if kind is EntryKind.RETRY:
                active = self.runs.get(name)
                if active is not None and active.record.status == RunStatus.QUEUED:
                    self.ready.append(name)
            elif (actor := self.actors.get(name)) is None:
                continue
            elif kind is EntryKind.FIRE:
                self.metrics.fired(due, now)
                self.scheduler.fire(actor, due, now)
            elif kind is EntryKind.PROBE and actor.state.is_paused:
                log.info("actor %s: half-open probe run", name, extra={"actor": name})
                probe = self.accept(actor, input_value=actor.config.input, trigger=Trigger.PROBE)
                self.breaker.probe_accepted(probe.run_id)

    # --- dispatch (the decision half: the shell sends) --------------------------------------

    def dispatch(self, workers: Workers[S]) -> None:
        """Give ready runs to the workers ``workers`` picks. Each takes its slot now, and its
        worker gets it once its running row is committed (:meth:`_send`): a supervisor that
        dies in between leaves a running row, which the next one records as lost, never a
        queued row for a run that went on running (it would run again as if never started)."""
        parked: list[str] = []  # runs of actors whose code is being reloaded: they wait for it
        while self.ready:
            slot = workers.pick()
            if slot is None:
                break
            active = self.runs.get(self.ready.popleft())
            if active is None or active.record.status != RunStatus.QUEUED:
                continue
            actor = self.actors.get(active.record.actor)
            if actor is not None and self._code.loading(actor):
                parked.append(active.run_id)
                continue
            started = self._start(active, actor, slot.worker_id)
            if started is None:
                continue
            workers.claim(slot, active.run_id)
            active.record = started.record
            active.worker_id = slot.worker_id
            active.unsent = True
            self.sink.put(started.record)
            seq = self.sink.put(events.run_started(started.record, **active.metadata))
            self._after_commit(seq, functools.partial(self._send, active, started, slot, workers))
        if parked:
            self.ready.extendleft(reversed(parked))

    def _send(self, active: ActiveRun, started: Dispatched, slot: S, workers: Workers[S]) -> None:
        """The attempt's running row is committed: its worker may start it now -- unless it
        ended meanwhile (its worker died, or it was cancelled), which gives the slot back."""
        if active.record is not started.record:
            workers.release(slot, active.run_id)
            return
        if not workers.send(slot, started.message):
            return  # the shell kills that worker: its death ends the attempt (not as poison)
        active.unsent = False
        active.overdue_at = (
            self._monotonic()
            + started.message.timeout_s
            + self.settings.kill_grace_s
            + OVERDUE_SLACK_S
        )

    def _start(
        self, active: ActiveRun, actor: ActorRuntime | None, worker_id: str
    ) -> Dispatched | None:
        """The running row and the message of the attempt, or None if it ended right here."""
        if actor is None:
            reason, why = Reason.UNKNOWN_ACTOR, "the actor is no longer configured"
            self.complete_attempt(active, self._lost(active.record, reason, why))
            return None
        cfg, code = actor.config, self._code.for_run(actor)
        if code.refused is not None:
            record = evolve(
                active.record, code_sha256=code.sha256, code_history_id=code.history_id,
                code_source=code.source,
            )  # fmt: skip
            self.complete_attempt(active, self._lost(record, Reason.FILE_MISSING, code.refused))
            return None
        record = evolve(
            active.record, code_sha256=code.sha256, code_history_id=code.history_id,
            code_source=code.source, status=RunStatus.RUNNING, worker_id=worker_id,
            started_at=self.clock(),
        )  # fmt: skip
        message = Run(
            run_id=record.run_id, attempt=record.attempt, actor=cfg.name, script=code.script,
            cwd=code.cwd, mode=cfg.mode, input_json=record.input_json, env=cfg.env,
            limits=cfg.limits, timeout_s=cfg.timeout_s, code_sha256=code.sha256,
            network=cfg.network, modules=code.modules, argv=code.argv, stored=code.stored,
            script_sha256=code.script_sha256,
        )  # fmt: skip
        return Dispatched(record, message)

    # --- results, lost attempts, retries ----------------------------------------------------

    def on_result(self, worker_id: str, result: Result) -> None:
        active = self.runs.get(result.run_id)
        if (
            active is None
            or active.record.attempt != result.attempt
            or active.worker_id != worker_id
            or active.record.status != RunStatus.RUNNING
        ):
            self.counters["stale_results"] += 1
            log.warning(
                "ignored a result for run %s attempt %d from %s: not in flight there",
                result.run_id, result.attempt, worker_id,
            )  # fmt: skip
            return
        record = apply_result(active.record, result)
        if self.phase is Phase.KILLING and result.reason == Reason.SHUTDOWN:
            record = evolve(record, error="killed: the shutdown grace period ran out")
        self.complete_attempt(active, record, output=result.output)

    def worker_gone(self, worker_id: str, description: str, lost_runs: Iterable[str]) -> None:
        """A worker died: each run it held is lost (and retried, unless it is poison)."""
        self.counters["worker_deaths"] += 1
        for run_id in lost_runs:
            active = self.runs.get(run_id)
            if active is not None and active.worker_id == worker_id:
                self.complete_attempt(active, self._worker_lost(active, description))

    def _worker_lost(self, active: ActiveRun, description: str) -> RunRecord:
        """The attempt's row when its worker died under it.

        Every run in flight there is a suspect: it is retried without counting against its
        actor's retries or breaker, until its attempts have taken down POISON_LOSSES workers.
        """
        if self.phase is Phase.KILLING:
            return self._lost(active.record, Reason.SHUTDOWN, f"worker {description}")
        if not active.unsent:  # only a run the worker had can have taken it down
            active.worker_losses += 1
        if active.worker_losses < POISON_LOSSES:
            return self._lost(active.record, Reason.WORKER_LOST, f"worker {description}")
        return self._lost(
            active.record,
            Reason.POISON,
            f"worker {description}; its attempts took down {active.worker_losses} workers, "
            "so it is not run again",
        )

    def _lost(self, record: RunRecord, reason: Reason, error: str) -> RunRecord:
        return lost_attempt(record, reason, error, self.clock())

    def complete_attempt(self, active: ActiveRun, record: RunRecord, output: Any = None) -> None:
        """Record an attempt's outcome; then either schedule the next attempt or finish."""
        active.record = record
        active.worker_id = None
        active.unsent = False
        actor = self.actors.get(record.actor)
        retry_at = None
        now = self.clock()
        if actor is not None and record.run_id not in self._cancels:
            retry_at = retry_time(actor.config, record, active.worker_losses, now, self._rng)
        self.sink.put(record)
        seq = self.sink.put(
            events.run_finished(record, will_retry=retry_at is not None, **active.metadata)
        )
        self.metrics.attempt_finished(
            record.actor, record.status, record.reason, record.duration_ms, now
        )
        self.attempt_log.attempt(record, retry_at, now)
        if retry_at is not None:
            self._schedule_retry(active, retry_at)
            return
        self._forget(record.run_id)
        outcome = outcome_of(record, output)
        size = len(record.output_json or "") + len(record.stderr_tail) + RecentOutcomes.OVERHEAD
        self.outcomes.add(outcome, size)
        self.counters["runs_finished"] += 1
        self.counters[
            "runs_succeeded" if record.status == RunStatus.SUCCEEDED else "runs_failed"
        ] += 1
        waiters, active.waiters = active.waiters, []
        self._after_commit(seq, lambda: self._deliver(waiters, outcome))
        if self.final_listeners and active.metadata:
            self._after_commit(seq, lambda: self._tell_listeners(record, active))
        if actor is not None:
            actor.active.discard(record.run_id)
            actor.last_run = record
            self.breaker.account(actor, record)
            if self.phase is Phase.RUNNING:
                self.scheduler.after_final(actor)

    def _tell_listeners(self, record: RunRecord, active: ActiveRun) -> None:
        for listener in self.final_listeners:
            listener(record, active)

    def _deliver(self, waiters: list[Waiter], outcome: RunOutcome) -> None:
        for waiter in waiters:
            self._replies.reply(waiter, "result", outcome.as_dict())

    def _schedule_retry(self, active: ActiveRun, retry_at: float) -> None:
        """The next attempt is a durable queued row due at ``retry_at``: it survives restarts."""
        record = active.record = next_attempt(active.record, retry_at, self.clock())
        self.counters["retries_scheduled"] += 1
        self.metrics.retry_scheduled(record.actor)
        self.sink.put(record)
        self.sink.put(events.run_queued(record, **active.metadata))
        self.heap.push((EntryKind.RETRY, record.run_id), retry_at)
        if self.phase is not Phase.RUNNING:
            self._tell_waiters_stopping(active)

    def _tell_waiters_stopping(self, active: ActiveRun) -> None:
        for waiter in active.waiters:
            self._replies.reply_error(
                waiter,
                "shutting_down",
                f"run {active.run_id} stays queued (attempt {active.record.attempt}) and "
                "will run when the supervisor starts again",
            )
        active.waiters = []

    # --- restart recovery and overdue runs --------------------------------------------------

    def restore(self, unfinished: Iterable[RunRecord]) -> None:
        """Recover the previous supervisor's unfinished runs, then seed the schedule heap."""
        now = self.clock()
        for record in unfinished:
            self._recover(record, now)
        for actor in self.actors.values():
            self.sink.put(actor.record())
            self.scheduler.seed(actor, now)
            self.breaker.restore(actor)

    def _recover(self, record: RunRecord, now: float) -> None:
        """A queued attempt never started: queue it again. A running one was lost with us."""
        active = ActiveRun(record=record, metadata=self.recovered_metadata(record))
        self.runs[record.run_id] = active
        self.input_bytes += len(record.input_json)
        if (actor := self.actors.get(record.actor)) is not None:
            actor.active.add(record.run_id)
        if record.status == RunStatus.QUEUED:
            due = record.scheduled_for if record.scheduled_for is not None else now
            self.heap.push((EntryKind.RETRY, record.run_id), max(due, now))
            log.info("re-queued run %s attempt %d from before the restart",
                     record.run_id, record.attempt)  # fmt: skip
            return
        why = "the supervisor stopped while the run was in flight"
        self.complete_attempt(active, self._lost(record, Reason.SUPERVISOR_LOST, why))

    def overdue(self) -> list[tuple[str, str]]:
        """Runs past their timeout, kill grace and slack, with the workers presumed hung (not
        a run still waiting for its running row to commit: its worker never had it)."""
        now = self._monotonic()
        return [
            (a.run_id, a.worker_id)
            for a in self.runs.values()
            if a.worker_id is not None and not a.unsent and now > a.overdue_at
        ]

    # --- shutdown ---------------------------------------------------------------------------

    def begin_shutdown(self, why: str) -> None:
        """First call: drain (no new runs; in-flight ones get the grace period). Second: kill."""
        if self.phase is not Phase.RUNNING:
            log.info("%s again: no more grace, killing runs in flight", why)
            self.shutdown_deadline = self._monotonic()
            return
        grace = self.settings.shutdown_grace_s
        log.info("%s: stopping; %d run(s) in flight get %.1fs to finish",
                 why, len(self.in_flight()), grace)  # fmt: skip
        self.phase = Phase.DRAINING
        self.shutdown_deadline = self._monotonic() + grace
        ready = set(self.ready)
        for active in self.runs.values():  # ready, or waiting in the heap for a retry
            if not active.acknowledged:
                continue  # its queued row is not committed yet: _acknowledge tells them
            if active.run_id in ready or (EntryKind.RETRY, active.run_id) in self.heap:
                self._tell_waiters_stopping(active)
        self.ready.clear()

    def advance_shutdown(self) -> bool:
        """Move shutdown on; True when the workers must now be told to kill their runs."""
        now = self._monotonic()
        in_flight = self.in_flight()
        if not in_flight:
            self.phase = Phase.DONE
        elif self.phase is Phase.DRAINING and now >= self.shutdown_deadline:
            log.warning("grace period over: killing %d run(s) in flight", len(in_flight))
            self.phase = Phase.KILLING
            self.shutdown_deadline = now + self.settings.kill_grace_s + KILL_WAIT_S
            return True
        elif self.phase is Phase.KILLING and now >= self.shutdown_deadline:
            why = "no result after the kill; worker unresponsive"
            for active in in_flight:
                self.complete_attempt(active, self._lost(active.record, Reason.SHUTDOWN, why))
            self.phase = Phase.DONE
        return False

    # --- cancel -----------------------------------------------------------------------------

    def cancel(self, run_id: str, waiter: Waiter | None = None) -> ActiveRun | None:
        """Cancel a run that is not final yet; ``waiter`` hears its one outcome (None: nobody
        waits, as for a cancelled workflow's step runs). None: no such run here (finished, or
        never ours), and nothing changed.

        A queued attempt (ready, waiting for its retry, not yet durable, or given a worker
        that is not sent it yet) ends ``cancelled`` at once and never starts. A running one is
        only marked: the caller has its worker kill it (:class:`~protocol.messages.CancelRun`),
        and its result says ``cancelled`` -- or, if it ended before the kill landed, how it
        ended; either way it is not retried.
        """
        active = self.runs.get(run_id)
        if active is None:
            return None
        self._cancels = {r for r in self._cancels if r in self.runs}  # only runs still here
        self._cancels.add(run_id)
        self.sink.put(events.run_event("run_cancel_requested", active.record))
        if active.sent_to is not None:
            if waiter is not None:
                active.waiters.append(waiter)
            return active
        self.heap.remove((EntryKind.RETRY, run_id))
        with contextlib.suppress(ValueError):
            self.ready.remove(run_id)
        now = self.clock()
        record = evolve(
            active.record, status=RunStatus.CANCELLED, reason=Reason.CANCELLED,
            error="cancelled before it started", finished_at=now,
        )  # fmt: skip
        # Clients still waiting for "accepted" (the queued row is not committed yet) hear it
        # first: _on_durable answers them, and it runs before the outcome is delivered.
        unacknowledged = active.waiters
        active.waiters = [*unacknowledged, *([] if waiter is None else [waiter])]
        self.complete_attempt(active, record)
        active.waiters = unacknowledged
        return active
