"""One workflow run as a state machine: items through ordered steps, in waves.

Nothing here touches a socket or the database: :class:`Ports` submits step runs (ordinary runs
of the run book), says whether a step actor is paused, and takes records to the batch writer.
The clock is injected, so the unit tests drive it in milliseconds.

The rules: waves of ``chunk_size`` items in submission order, the next wave once every item of
this one has ended; at most ``max_parallel`` items of the wave have a step run in flight; step
``n + 1`` gets step ``n``'s output, the first step the item; an item ends exactly once
(``item_succeeded`` or ``item_failed``). A permanent failure ends the item (``continue``) or
stops the workflow run (``stop``: no new steps; the items left end failed). A paused step actor
pauses the workflow run until the actor is resumed. Every ``snapshot_every`` events the state
is written as a :class:`~supervisor.workflows.records.WorkflowSnapshot`.
"""

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

from protocol.messages import MAX_INPUT_CHARS
from protocol.outcomes import RunStatus
from supervisor.events import new_id
from supervisor.records import Event, Record, RunRecord
from supervisor.workflows.config import WorkflowConfig
from supervisor.workflows.records import (
    WorkflowItemRecord,
    WorkflowRunRecord,
    WorkflowSnapshot,
    WorkflowStatus,
)

log = logging.getLogger(__name__)


class ItemStatus(StrEnum):
    PENDING = "pending"  # no step ran yet
    RUNNING = "running"  # a step run is in flight (run_id)
    WAITING = "waiting"  # between steps: the next one is to be submitted
    SUCCEEDED = "succeeded"
    FAILED = "failed"


ENDED = frozenset({ItemStatus.SUCCEEDED, ItemStatus.FAILED})


class Ports(Protocol):
    """What a workflow run needs from the supervisor."""

    def submit(
        self, actor: str, input_json: str, correlation_id: str, metadata: dict[str, Any]
    ) -> str | None:
        """Accept a step run; its run id, or None when the run book has no room now."""
        ...

    def paused(self, actor: str) -> str | None:
        """Why ``actor`` is paused, or None."""
        ...

    def put(self, record: Record) -> int:
        """To the batch writer; the sequence number (see :class:`RecordSink`)."""
        ...


@dataclass(slots=True)
class Item:
    item_id: str
    position: int
    input_json: str
    step: int = 0  # the step in flight, or the next one to run
    status: ItemStatus = ItemStatus.PENDING
    run_id: str | None = None  # the step run in flight
    last_run_id: str | None = None  # the previous step's run: its output is the next input
    attempts: int = 0  # attempts of every step so far
    next_input: str | None = None  # WAITING: the next step's input (None: to be read)

    def state(self) -> list[Any]:
        return [self.step, str(self.status), self.run_id, self.last_run_id, self.attempts]


def run_events(record: RunRecord) -> int:
    """The events one step run has written by its final outcome: per attempt a started and a
    finished event, and a queued one per retry (the first one is counted at submission)."""
    return 3 * record.attempt - 1


class WorkflowRun:
    """The state of one workflow run; build with :meth:`create` (new) or from a replay."""

    def __init__(
        self,
        header: WorkflowRunRecord,
        items: list[Item],
        ports: Ports,
        clock: Callable[[], float],
    ) -> None:
        self.header = header
        self.items = items
        self.by_id = {item.item_id: item for item in items}
        self.by_run: dict[str, Item] = {i.run_id: i for i in items if i.run_id is not None}
        self._ports, self._clock = ports, clock
        self.events_seen = 0
        self._since_snapshot = 0
        self.snapshot_seq = 0
        self._ended_prefix = 0  # items before it have all ended (snapshots skip them)
        self._failed = {i.position for i in items if i.status == ItemStatus.FAILED}
        self.on_finished: Callable[[WorkflowRun], None] = lambda run: None

    # --- creating -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        config: WorkflowConfig,
        items: Iterable[tuple[str, str]],
        *,
        ports: Ports,
        clock: Callable[[], float],
        max_parallel: int,
        trigger: str = "submit",
        epoch: int = 0,
    ) -> "WorkflowRun":
        """A new run of ``config`` over ``items`` (``(item_id, input_json)``, ids unique)."""
        made = [Item(item_id, n, text) for n, (item_id, text) in enumerate(items)]
        now = clock()
        header = WorkflowRunRecord(
            workflow_run_id=new_id(),
            workflow=config.name,
            status=WorkflowStatus.RUNNING,
            steps=list(config.steps),
            chunk_size=config.chunk_size,
            max_parallel=config.max_parallel or max_parallel,
            on_item_failure=config.on_item_failure,
            snapshot_every=config.snapshot_every,
            item_count=len(made),
            waves=math.ceil(len(made) / config.chunk_size),
            trigger=trigger,
            created_at=now,
            updated_at=now,
            epoch=epoch,
        )
        return cls(header, made, ports, clock)

    def start(self) -> int:
        """Write the header, the items and ``workflow_started``: the sequence number after
        which the run is durable (its acknowledgement waits for it)."""
        h = self.header
        self._ports.put(h)
        for item in self.items:
            self._ports.put(
                WorkflowItemRecord(
                    workflow_run_id=h.workflow_run_id,
                    item_id=item.item_id,
                    position=item.position,
                    input_json=item.input_json,
                    created_at=h.created_at,
                )
            )
        return self._event(
            "workflow_started",
            items=h.item_count,
            waves=h.waves,
            steps=h.steps,
            chunk_size=h.chunk_size,
            max_parallel=h.max_parallel,
            trigger=h.trigger,
        )

    # --- reading ------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.header.workflow_run_id

    @property
    def status(self) -> str:
        return self.header.status

    @property
    def finished(self) -> bool:
        return self.header.finished_at is not None

    def in_flight(self) -> int:
        return len(self.by_run)

    def wave_items(self) -> list[Item]:
        size = self.header.chunk_size
        return self.items[self.header.wave * size : (self.header.wave + 1) * size]

    def progress(self) -> dict[str, Any]:
        h = self.header
        return {
            "workflow_run_id": h.workflow_run_id,
            "workflow": h.workflow,
            "status": h.status,
            "items": h.item_count,
            "succeeded": h.succeeded,
            "failed": h.failed,
            "done": h.succeeded + h.failed,
            "wave": h.wave,
            "waves": h.waves,
            "in_flight": self.in_flight(),
            "paused_reason": h.paused_reason,
            "created_at": h.created_at,
            "finished_at": h.finished_at,
        }

    # --- moving on ----------------------------------------------------------------------------

    def pump(self) -> None:
        """Submit what may run now; begin the next wave, or finish, when this one is over."""
        if self.finished:
            return
        if self.status == WorkflowStatus.PAUSED and not self._unpause():
            self._maybe_finish()  # the last items may have ended while it was paused
            return
        if self.status != WorkflowStatus.RUNNING:
            self._maybe_finish()
            return
        size = self.header.chunk_size
        while self.header.wave < self.header.waves:
            stop = min((self.header.wave + 1) * size, len(self.items))
            if self._open_from(stop) == stop:  # every item of this wave has ended
                self._next_wave()
                continue
            self._submit_from(stop)
            return
        self._maybe_finish()

    def _open_from(self, stop: int) -> int:
        """The first item (before ``stop``) that has not ended, or ``stop``. Items end for good,
        so the scan resumes where it stopped: a pump costs O(items in flight), not O(a wave)."""
        prefix, items = self._ended_prefix, self.items
        while prefix < stop and items[prefix].status in ENDED:
            prefix += 1
        self._ended_prefix = prefix
        return prefix

    def _submit_from(self, stop: int) -> None:
        """Submit the wave's next steps in item order, from its first item not ended."""
        limit = self.header.max_parallel
        for position in range(self._ended_prefix, stop):
            if len(self.by_run) >= limit or self.status != WorkflowStatus.RUNNING:
                return
            item = self.items[position]
            if item.status not in (ItemStatus.PENDING, ItemStatus.WAITING):
                continue
            if not self._submit(item):
                return

    def _submit(self, item: Item) -> bool:
        """Submit the item's next step; False: stop submitting for now (no room, or paused)."""
        actor = self.header.steps[item.step]
        why = self._ports.paused(actor)
        if why is not None:
            self._pause(f"step actor {actor!r} is paused: {why}")
            return False
        text = item.input_json if item.step == 0 else item.next_input
        if text is None:  # a restart lost it: the replay reads it before the loop; a bug here
            self._end(
                item,
                ItemStatus.FAILED,
                reason="input_lost",
                error="the previous step's output could not be read",
            )
            return True
        if len(text) > MAX_INPUT_CHARS:
            self._end(
                item,
                ItemStatus.FAILED,
                reason="input_too_large",
                error=f"step {item.step} input is {len(text)} characters as JSON; a "
                f"worker accepts at most {MAX_INPUT_CHARS}",
            )
            return True
        metadata = {
            "workflow": self.header.workflow,
            "workflow_run_id": self.id,
            "conversation_id": item.item_id,
            "execution_order": item.step,
        }
        run_id = self._ports.submit(actor, text, self.id, metadata)
        if run_id is None:
            return False
        item.status, item.run_id, item.next_input = ItemStatus.RUNNING, run_id, None
        self.by_run[run_id] = item
        self._count(1)  # run_queued
        return True

    def on_final(self, record: RunRecord) -> None:
        """A step run's final outcome is committed: advance, end or fail its item."""
        item = self.by_run.pop(record.run_id, None)
        if item is None:
            return
        self._count(run_events(record))
        item.run_id = None
        item.attempts += record.attempt
        if record.status == RunStatus.SUCCEEDED:
            item.last_run_id = record.run_id
            if item.step + 1 == len(self.header.steps):
                self._end(item, ItemStatus.SUCCEEDED)
            elif self.status in (WorkflowStatus.RUNNING, WorkflowStatus.PAUSED):
                item.step += 1
                item.status, item.next_input = ItemStatus.WAITING, record.output_json or "null"
            else:  # stopped or cancelled meanwhile
                self._end(
                    item,
                    ItemStatus.FAILED,
                    reason=self.status,
                    error=f"the workflow run was {self.status} before step {item.step + 1}",
                )
        else:
            why = record.reason or record.status
            self.fail_item(item, reason=why, error=record.error, run_id=record.run_id)
        self.pump()

    def succeed_item(self, item: Item) -> None:
        self._end(item, ItemStatus.SUCCEEDED)

    def fail_item(
        self, item: Item, *, reason: str | None, error: str | None, run_id: str | None
    ) -> None:
        """End ``item`` failed; with ``on_item_failure = "stop"`` the run stops too."""
        self._end(item, ItemStatus.FAILED, reason=reason, error=error, run_id=run_id)
        running = self.status in (WorkflowStatus.RUNNING, WorkflowStatus.PAUSED)
        if self.header.on_item_failure == "stop" and running:
            step = f"{item.step} ({self.header.steps[item.step]})"
            self._halt(WorkflowStatus.STOPPED, f"item {item.item_id} failed at step {step}")

    def cancel(self, why: str) -> bool:
        """Stop for good: no new steps; the items not in flight end failed now, the others
        when their step run's outcome comes (the book cancels those step runs). False: the run
        had finished, or stopped, already."""
        if self.finished or self.status in (WorkflowStatus.STOPPED, WorkflowStatus.CANCELLED):
            return False
        self._halt(WorkflowStatus.CANCELLED, why)
        self.pump()
        return True

    def resume(self) -> bool:
        """An operator's resume: True if the run was paused and runs again now."""
        if self.status != WorkflowStatus.PAUSED:
            return False
        self.pump()
        return self.status == WorkflowStatus.RUNNING

    def _halt(self, status: WorkflowStatus, why: str) -> None:
        self._set(status=status, paused_reason=why)
        self._event(f"workflow_{status}", reason=why)
        for item in self.items:
            if item.status in (ItemStatus.PENDING, ItemStatus.WAITING):
                self._end(
                    item,
                    ItemStatus.FAILED,
                    reason=str(status),
                    error=f"the workflow run was {status}: {why}",
                )

    def _pause(self, why: str) -> None:
        if self.status == WorkflowStatus.PAUSED:
            return
        self._set(status=WorkflowStatus.PAUSED, paused_reason=why)
        self._event("workflow_paused", reason=why)
        log.warning(
            "workflow run %s paused: %s",
            self.id,
            why,
            extra={"event": "workflow_paused", "workflow_run_id": self.id},
        )

    def _unpause(self) -> bool:
        """Paused: resume once no step actor is paused any more."""
        for actor in self.header.steps:
            if self._ports.paused(actor) is not None:
                return False
        self._set(status=WorkflowStatus.RUNNING, paused_reason=None)
        self._event("workflow_resumed")
        log.info("workflow run %s resumed", self.id, extra={"workflow_run_id": self.id})
        return True

    def _next_wave(self) -> None:
        h = self.header
        self._event("wave_finished", wave=h.wave, items=len(self.wave_items()))
        self._set(wave=h.wave + 1)
        if h.wave + 1 < h.waves:
            self._event("wave_started", wave=h.wave + 1, items=len(self.wave_items()))

    def _end(
        self,
        item: Item,
        status: ItemStatus,
        *,
        reason: str | None = None,
        error: str | None = None,
        run_id: str | None = None,
    ) -> None:
        """End ``item``: the one place an item ends, so it ends exactly once."""
        if item.status in ENDED:
            return
        item.status, item.next_input = status, None
        h = self.header
        if status == ItemStatus.SUCCEEDED:
            self.header = replace(h, succeeded=h.succeeded + 1)
            self._event(
                "item_succeeded",
                item=item.item_id,
                steps=len(h.steps),
                attempts=item.attempts,
                run_id=item.last_run_id,
            )
        else:
            self.header = replace(h, failed=h.failed + 1)
            self._failed.add(item.position)
            self._event(
                "item_failed",
                item=item.item_id,
                step=item.step,
                reason=reason,
                error=error,
                attempts=item.attempts,
                run_id=run_id,
            )
        # the counts go with the item's final event, so `status` is exact; the store keeps only
        # a batch's last header of a run, so this costs one row per batch, not per item
        self.header = replace(self.header, updated_at=self._clock())
        self._ports.put(self.header)

    def _maybe_finish(self) -> None:
        if self.finished or self.in_flight() or self._open_from(len(self.items)) < len(self.items):
            return
        h = self.header
        status = h.status
        if status in (WorkflowStatus.RUNNING, WorkflowStatus.PAUSED):
            status = WorkflowStatus.FAILED if h.failed else WorkflowStatus.SUCCEEDED
        now = self._clock()
        self._set(status=status, finished_at=now)
        self._event(
            "workflow_finished",
            status=str(status),
            items=h.item_count,
            succeeded=h.succeeded,
            failed=h.failed,
            waves=h.waves,
            duration_s=round(now - h.created_at, 6),
        )
        log.info(
            "workflow run %s %s: %d succeeded, %d failed",
            self.id,
            status,
            h.succeeded,
            h.failed,
            extra={"event": "workflow_finished", "workflow_run_id": self.id},
        )
        self._snapshot()
        self.on_finished(self)

    # --- records ------------------------------------------------------------------------------

    def _set(self, **changes: Any) -> None:
        """Change the header and write it (status, wave, finish; the counts with each item's
        end, see :meth:`_end`)."""
        self.header = replace(self.header, updated_at=self._clock(), **changes)
        self._ports.put(self.header)

    def recount(self) -> None:
        """After a replay set the items' states: the counts and the failed set from them."""
        failed = {i.position for i in self.items if i.status == ItemStatus.FAILED}
        succeeded = sum(1 for i in self.items if i.status == ItemStatus.SUCCEEDED)
        self._failed, self._ended_prefix = failed, 0
        self.header = replace(self.header, succeeded=succeeded, failed=len(failed))
        self._ports.put(self.header)  # the counts as replayed, and the new term's epoch

    def record_event(self, event_type: str, **metadata: Any) -> int:
        """Write one of this run's events (``workflow_recovered``, from the book)."""
        return self._event(event_type, **metadata)

    def _event(self, event_type: str, **metadata: Any) -> int:
        item = metadata.get("item")
        meta = {"workflow": self.header.workflow, "workflow_run_id": self.id, **metadata}
        if item is not None:
            meta["conversation_id"] = item  # the item's events, with its step runs'
        seq = self._ports.put(
            Event(
                event_id=new_id(),
                event_type=event_type,
                aggregate_type="workflow_run",
                aggregate_id=self.id,
                correlation_id=self.id,
                metadata=meta,
                created_at=self._clock(),
            )
        )
        self._count(1)
        return seq

    def _count(self, events: int) -> None:
        self.events_seen += events
        self._since_snapshot += events
        if self._since_snapshot >= self.header.snapshot_every:
            self._snapshot()

    def _snapshot(self) -> None:
        self._since_snapshot = 0
        self.snapshot_seq += 1
        self._ports.put(  # the header went with its last change (see _set and _end)
            WorkflowSnapshot(
                workflow_run_id=self.id,
                seq=self.snapshot_seq,
                events_seen=self.events_seen,
                state=self.snapshot_state(),
                created_at=self._clock(),
            )
        )

    def snapshot_state(self) -> dict[str, Any]:
        """Ended items as ``[start, stop)`` position ranges (they end roughly in order, so a
        few ranges), failed ones listed, started ones in full: O(a wave), not O(the batch).

        The items before ``_ended_prefix`` have all ended; past the current wave none has
        started (unless the run was stopped or cancelled, which ends them all)."""
        prefix = self._open_from(len(self.items))
        ended: list[list[int]] = [[0, prefix]] if prefix else []
        failed = sorted(self._failed)
        started: dict[str, list[Any]] = {}
        halted = self.status in (WorkflowStatus.STOPPED, WorkflowStatus.CANCELLED)
        stop = len(self.items) if halted else (self.header.wave + 1) * self.header.chunk_size
        for item in self.items[prefix:stop]:
            if item.status in ENDED:
                if ended and ended[-1][1] == item.position:
                    ended[-1][1] += 1
                else:
                    ended.append([item.position, item.position + 1])
            elif item.status != ItemStatus.PENDING:
                started[str(item.position)] = item.state()
        h = self.header
        return {
            "status": h.status,
            "wave": h.wave,
            "succeeded": h.succeeded,
            "failed": h.failed,
            "paused_reason": h.paused_reason,
            "ended": ended,
            "failed_items": failed,
            "items": started,
        }
