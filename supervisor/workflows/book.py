"""The supervisor's workflow runs: starting, resuming after a restart, and the run book's side.

One :class:`WorkflowBook` per supervisor, owned by its loop like the run book. It is the
engines' :class:`~supervisor.workflows.engine.Ports`: step runs are accepted by the run book as
ordinary runs (correlation id = the workflow run, event metadata naming the item and the step),
and each final outcome comes back through ``RunBook.final_listeners`` once committed.
"""

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import orjson

from protocol.outcomes import FINAL_STATUSES
from supervisor.events import new_id
from supervisor.records import Record, RunRecord, Trigger
from supervisor.runbook import RunBook
from supervisor.runs import ActiveRun
from supervisor.store.base import Store
from supervisor.workflows.config import WorkflowConfig
from supervisor.workflows.engine import ItemStatus, WorkflowRun
from supervisor.workflows.records import WorkflowStatus
from supervisor.workflows.replay import rebuild, settle

log = logging.getLogger(__name__)

MAX_ITEMS = 100_000  # per workflow run: each item is held in memory until its run finishes
MAX_ITEM_ID = 200


class WorkflowRefused(ValueError):
    """A request the supervisor cannot take: ``code`` is the control protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class WorkflowBook:
    """Every unfinished workflow run of this supervisor."""

    def __init__(
        self,
        *,
        book: RunBook,
        configs: Callable[[], Mapping[str, WorkflowConfig]],
        capacity: Callable[[], int],
        epoch: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._book, self._configs, self._capacity = book, configs, capacity
        self._epoch, self._clock = epoch, clock
        self.runs: dict[str, WorkflowRun] = {}  # until a finished run's last rows commit
        self._due: dict[str, float | None] = {}  # scheduled workflows: the next fire
        self._scheduled: dict[str, str] = {}  # workflow -> its scheduled run still going
        book.final_listeners.append(self._on_final)
        book.recovered_metadata = self._metadata_of

    # --- Ports --------------------------------------------------------------------------------

    def submit(
        self, actor: str, input_json: str, correlation_id: str, metadata: dict[str, Any]
    ) -> str | None:
        book = self._book
        runtime = book.actors.get(actor)
        if runtime is None or not book.accepting or not book.has_room(len(input_json)):
            return None
        active = book.accept(
            runtime, input_value=None, input_json=input_json, trigger=Trigger.WORKFLOW,
            correlation_id=correlation_id, metadata=metadata,
        )  # fmt: skip
        return active.run_id

    def paused(self, actor: str) -> str | None:
        runtime = self._book.actors.get(actor)
        if runtime is None:
            return "the actor is no longer configured"
        if runtime.state.is_paused:
            return runtime.state.paused_reason or "paused"
        return None

    def put(self, record: Record) -> int:
        return self._book.sink.put(record)

    # --- starting -----------------------------------------------------------------------------

    def start(
        self,
        name: str,
        items: Any,
        on_durable: Callable[[WorkflowRun], None],
        *,
        trigger: str = "submit",
    ) -> WorkflowRun:
        """Start a run of workflow ``name``; ``on_durable`` once it and its items are committed.

        :raises WorkflowRefused: unknown workflow, bad items, shutting down.
        """
        config = self._configs().get(name)
        if config is None:
            known = ", ".join(sorted(self._configs())) or "none"
            raise WorkflowRefused(
                "unknown_workflow", f"no workflow named {name!r} (known: {known})"
            )
        if not self._book.accepting:
            raise WorkflowRefused("shutting_down", "the supervisor is shutting down")
        run = WorkflowRun.create(
            config, identify(items), ports=self, clock=self._clock,
            max_parallel=self._capacity(), trigger=trigger, epoch=self._epoch,
        )  # fmt: skip
        run.on_finished = self._finished
        self.runs[run.id] = run
        seq = run.start()
        log.info("workflow run %s of %s: %d items in %d waves", run.id, name,
                 run.header.item_count, run.header.waves,
                 extra={"event": "workflow_started", "workflow_run_id": run.id})  # fmt: skip

        def durable() -> None:
            on_durable(run)
            run.pump()

        self._book.after_commit(seq, durable)
        return run

    def control(
        self, action: str, workflow_run_id: str, kill: Callable[[str, str, int], bool]
    ) -> dict[str, Any]:
        """``resume`` (a paused run: its paused step actors too) or ``cancel`` (see
        :meth:`_cancel`). ``workflow_run_id`` is whole: the CLI and the HTTP API resolve a
        prefix with the store (``Store.resolve_id``). ``kill(worker_id, run_id, attempt)`` has
        a worker kill a running step.

        :raises WorkflowRefused: no such unfinished run here."""
        run = self.runs.get(workflow_run_id)
        if run is None or run.finished:  # finished: its last rows are on their way
            raise WorkflowRefused(
                "unknown_workflow_run",
                f"no unfinished workflow run {workflow_run_id!r} in this supervisor",
            )
        if action == "cancel":
            cancelled = self._cancel(run, kill)
            return {**run.progress(), "changed": cancelled is not None,
                    "cancelled_steps": cancelled or 0}  # fmt: skip
        for actor in run.header.steps:
            runtime = self._book.actors.get(actor)
            if runtime is not None and runtime.state.is_paused:
                self._book.breaker.resume(runtime, by="operator")
        resumed = run.resume()  # before progress(): it changes the status
        return {**run.progress(), "changed": resumed}

    def _cancel(self, run: WorkflowRun, kill: Callable[[str, str, int], bool]) -> int | None:
        """Cancel ``run``: no new steps, the items not in flight end failed now, and each step
        run in flight is cancelled through the run book (a queued one at once, a running one
        killed by its worker), so it is recorded ``cancelled`` and never retried; its item ends
        failed (reason ``cancelled``) once that outcome is committed, and the workflow run then
        finishes ``cancelled``. The number of step runs cancelled; None: it had finished (or
        stopped) already."""
        in_flight = list(run.by_run)  # outcomes committed meanwhile may shrink it as we go
        if not run.cancel("cancelled by an operator"):
            return None
        cancelled = 0
        for run_id in in_flight:
            active = self._book.runs.get(run_id)
            if active is None:  # its outcome is on its way to on_final
                continue
            worker_id, attempt = active.sent_to, active.record.attempt
            self._book.cancel(run_id)
            cancelled += 1
            if worker_id is not None:
                kill(worker_id, run_id, attempt)  # unreachable: its death ends it, not retried
        log.info("workflow run %s cancelled: %d step run(s) cancelled", run.id, cancelled,
                 extra={"event": "workflow_cancelled", "workflow_run_id": run.id})  # fmt: skip
        return cancelled

    def configs(self) -> Mapping[str, WorkflowConfig]:
        return self._configs()

    def progress(self) -> list[dict[str, Any]]:
        return [run.progress() for run in self.runs.values()]

    # --- the run book's side ------------------------------------------------------------------

    def _on_final(self, record: RunRecord, active: ActiveRun) -> None:
        run = self.runs.get(active.metadata.get("workflow_run_id", ""))
        if run is not None:
            run.on_final(record)

    def _metadata_of(self, record: RunRecord) -> dict[str, Any]:
        run = self.runs.get(record.correlation_id)
        item = run.by_run.get(record.run_id) if run is not None else None
        if run is None or item is None:
            return {}
        return {
            "workflow": run.header.workflow, "workflow_run_id": run.id,
            "conversation_id": item.item_id, "execution_order": item.step,
        }  # fmt: skip

    def _finished(self, run: WorkflowRun) -> None:
        """A run ended: it stays among the live ones (``workflow`` requests list it) until its
        final rows are committed, so that whoever sees it gone finds its outcome in the store."""

        def gone() -> None:
            self.runs.pop(run.id, None)
            if self._scheduled.get(run.header.workflow) == run.id:
                del self._scheduled[run.header.workflow]

        self._book.after_commit(self._book.sink.last_seq, gone)

    # --- the loop's side ----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Move every run on (room in the queue came back, an actor was resumed) and start
        the scheduled workflows that are due."""
        for run in list(self.runs.values()):
            run.pump()
        if self._book.accepting:
            self._fire_schedules(now)

    def _fire_schedules(self, now: float) -> None:
        for name, config in self._configs().items():
            if config.schedule is None:
                continue
            if name not in self._due:
                self._due[name] = config.schedule.first_due(now)
            due = self._due[name]
            if due is None or due > now:
                continue
            self._due[name] = config.schedule.next_due(due)
            if name in self._scheduled:  # the previous one still runs: skip, as overlap=skip
                log.info("workflow %s: previous scheduled run still going; skipped", name)
                continue
            try:
                run = self.start(name, config.input, lambda run: None, trigger="schedule")
            except WorkflowRefused as exc:  # the loop must go on: say why and wait for the next
                log.error("workflow %s: scheduled run refused: %s", name, exc,
                          extra={"event": "workflow_refused", "workflow": name})  # fmt: skip
                continue
            self._scheduled[name] = run.id

    # --- start-up -----------------------------------------------------------------------------

    def recover(self, store: Store) -> None:
        """Before the run book recovers its runs: rebuild each unfinished workflow run from its
        latest snapshot and the events after it."""
        for header in store.workflow_runs(active_only=True, limit=1_000_000):
            snapshot = store.latest_workflow_snapshot(header.workflow_run_id)
            since = snapshot.created_at if snapshot is not None else None
            events = store.workflow_events(header.workflow_run_id, since)
            header = replace(header, epoch=self._epoch)  # our term fences its writes now
            replayed = rebuild(
                header, store.workflow_items(header.workflow_run_id), snapshot, events,
                ports=self, clock=self._clock,
            )  # fmt: skip
            run = replayed.run
            run.on_finished = self._finished
            self.runs[run.id] = run
            settle(replayed, lambda run_id: _output_of(store, run_id))
            seq = snapshot.seq if snapshot is not None else 0
            run.record_event(
                "workflow_recovered", snapshot_seq=seq, events_read=replayed.events_read,
                in_flight=run.in_flight(),
            )  # fmt: skip
            log.info(
                "workflow run %s resumed from snapshot %d and %d later events", run.id, seq,
                replayed.events_read, extra={"event": "workflow_recovered"},
            )  # fmt: skip

    def after_restore(self, store: Store) -> None:
        """After the run book recovered its runs: a step run it does not hold has ended (its
        final row landed, its event did not): read that outcome. Then move every run on."""
        for run in list(self.runs.values()):
            for run_id in [r for r in run.by_run if r not in self._book.runs]:
                attempts = store.list_runs(run_id=run_id, limit=1)
                if attempts and attempts[0].status in FINAL_STATUSES:
                    run.on_final(attempts[0])
                else:  # never accepted: submit the step again
                    item = run.by_run.pop(run_id)
                    item.run_id = None
                    item.status = ItemStatus.WAITING if item.step else ItemStatus.PENDING
                    if item.step:
                        item.next_input = _output_of(store, item.last_run_id or "")
            run.pump()


def identify(items: Any) -> list[tuple[str, str]]:
    """Each item's id (its ``id`` field, or a generated one) and JSON text.

    :raises WorkflowRefused: not a non-empty list, too many, a bad or repeated id, not JSON."""
    if not isinstance(items, list) or not items:
        raise WorkflowRefused("bad_request", "items must be a non-empty array")
    if len(items) > MAX_ITEMS:
        raise WorkflowRefused("bad_request", f"{len(items)} items; at most {MAX_ITEMS} per run")
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        raw = item.get("id") if isinstance(item, dict) else None
        if raw is None:
            item_id = new_id()
        elif isinstance(raw, str | int) and not isinstance(raw, bool):
            item_id = str(raw)
            if not item_id or len(item_id) > MAX_ITEM_ID or "\x00" in item_id:
                raise WorkflowRefused(
                    "bad_request", f"item {index}: id must be 1-{MAX_ITEM_ID} characters, no NUL"
                )
        else:
            raise WorkflowRefused("bad_request", f"item {index}: id must be a string or integer")
        if item_id in seen:
            raise WorkflowRefused("bad_request", f"item {index}: id {item_id!r} is repeated")
        seen.add(item_id)
        try:
            text = orjson.dumps(item).decode()
        except orjson.JSONEncodeError as exc:
            raise WorkflowRefused("bad_request", f"item {index} cannot be encoded: {exc}") from None
        found.append((item_id, text))
    return found


def _output_of(store: Store, run_id: str) -> str | None:
    attempts = store.list_runs(run_id=run_id, limit=1)
    if not attempts or attempts[0].status not in FINAL_STATUSES:
        return None
    return attempts[0].output_json or "null"


__all__ = ["WorkflowBook", "WorkflowRefused", "WorkflowStatus", "identify"]
