"""Rebuild a workflow run after a restart: its latest snapshot, then the events after it.

The fold is idempotent (an event already reflected in the snapshot changes nothing), so the
cut-off is simply "created at or after the snapshot". What the events say happened but was not
yet acted on -- a final outcome whose item did not move on, an item that ended without its
event -- is finished by :func:`settle`, through the engine, so every item ends exactly once.
"""

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from supervisor.records import Event
from supervisor.workflows.engine import ENDED, Item, ItemStatus, Ports, WorkflowRun
from supervisor.workflows.records import (
    WorkflowItemRecord,
    WorkflowRunRecord,
    WorkflowSnapshot,
    WorkflowStatus,
)

_HALTED = {
    "workflow_stopped": WorkflowStatus.STOPPED,
    "workflow_cancelled": WorkflowStatus.CANCELLED,
}


class Replayed:
    """A rebuilt run and what its events left to do (see :func:`settle`)."""

    def __init__(self, run: WorkflowRun, events_read: int) -> None:
        self.run = run
        self.events_read = events_read
        self.failures: dict[str, tuple[str | None, str | None, str]] = {}  # item -> why, run


def rebuild(
    header: WorkflowRunRecord,
    rows: Sequence[WorkflowItemRecord],
    snapshot: WorkflowSnapshot | None,
    events: Sequence[Event],
    *,
    ports: Ports,
    clock: Callable[[], float],
) -> Replayed:
    items = [Item(r.item_id, r.position, r.input_json) for r in rows]
    run = WorkflowRun(header, items, ports, clock)
    replayed = Replayed(run, len(events))
    if snapshot is not None:
        _apply_snapshot(run, snapshot)
    for event in events:
        _fold(replayed, event)
    run.by_run = {i.run_id: i for i in items if i.run_id is not None}
    return replayed


def _apply_snapshot(run: WorkflowRun, snapshot: WorkflowSnapshot) -> None:
    state: dict[str, Any] = snapshot.state
    failed = set(state["failed_items"])
    for start, stop in state["ended"]:
        for item in run.items[start:stop]:
            item.status = ItemStatus.FAILED if item.position in failed else ItemStatus.SUCCEEDED
    for position, (step, status, run_id, last_run_id, attempts) in state["items"].items():
        item = run.items[int(position)]
        item.step, item.status, item.run_id = step, ItemStatus(status), run_id
        item.last_run_id, item.attempts = last_run_id, attempts
    run.header = replace(
        run.header, status=state["status"], wave=state["wave"],
        paused_reason=state["paused_reason"],
    )  # fmt: skip
    run.snapshot_seq, run.events_seen = snapshot.seq, snapshot.events_seen


def _fold(replayed: Replayed, event: Event) -> None:
    run, meta, kind = replayed.run, event.metadata, event.event_type
    if event.aggregate_type == "workflow_run":
        _fold_own(replayed, event)
        return
    item = run.by_id.get(meta.get("conversation_id", ""))
    order = meta.get("execution_order")
    if item is None or not isinstance(order, int) or item.status in ENDED:
        return
    if kind == "run_queued" and meta.get("attempt") == 1 and item.step <= order:
        item.step, item.status, item.run_id = order, ItemStatus.RUNNING, event.aggregate_id
    elif kind in ("run_succeeded", "run_failed") and item.step == order:
        if meta.get("will_retry"):
            return
        item.attempts += int(meta.get("attempt", 1))
        item.run_id = None
        if kind == "run_succeeded":
            item.last_run_id = event.aggregate_id
            item.step, item.status, item.next_input = order + 1, ItemStatus.WAITING, None
        else:
            item.status = ItemStatus.WAITING  # ended by settle(), with its item_failed event
            why = (meta.get("reason"), meta.get("error"), event.aggregate_id)
            replayed.failures[item.item_id] = why


def _fold_own(replayed: Replayed, event: Event) -> None:
    run, meta, kind = replayed.run, event.metadata, event.event_type
    item = run.by_id.get(meta.get("item", ""))
    if kind in ("item_succeeded", "item_failed") and item is not None:
        item.status = ItemStatus.SUCCEEDED if kind == "item_succeeded" else ItemStatus.FAILED
        item.run_id, item.next_input = None, None
        replayed.failures.pop(item.item_id, None)
    elif kind == "wave_finished":
        run.header = replace(run.header, wave=max(run.header.wave, int(meta["wave"]) + 1))
    elif kind == "workflow_paused":
        run.header = replace(run.header, status=WorkflowStatus.PAUSED, paused_reason=meta["reason"])
    elif kind == "workflow_resumed":
        run.header = replace(run.header, status=WorkflowStatus.RUNNING, paused_reason=None)
    elif kind in _HALTED:
        run.header = replace(run.header, status=_HALTED[kind], paused_reason=meta.get("reason"))


def settle(replayed: Replayed, output_of: Callable[[str], str | None]) -> None:
    """Act on what the events left half done: end the items whose last outcome is known,
    and read the input of the items waiting for their next step (``output_of(run_id)``)."""
    run = replayed.run
    steps = len(run.header.steps)
    run.recount()
    for item in run.items:
        if item.status != ItemStatus.WAITING:
            continue
        if item.item_id in replayed.failures:
            reason, error, run_id = replayed.failures[item.item_id]
            run.fail_item(item, reason=reason, error=error, run_id=run_id)
        elif item.step == steps:
            item.step = steps - 1
            run.succeed_item(item)
        elif run.status in (WorkflowStatus.STOPPED, WorkflowStatus.CANCELLED):
            run.fail_item(
                item, reason=run.status, error=f"the workflow run was {run.status}", run_id=None
            )
        elif item.last_run_id is not None:
            item.next_input = output_of(item.last_run_id)
