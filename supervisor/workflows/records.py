"""What a workflow run stores: its header row, its items, its snapshots (all through the writer).

Records are frozen, as every record the batch writer takes (:mod:`supervisor.records`). The
progress of an item is not a row of its own: it is the events of its step runs (their
``conversation_id`` is the item's id) and the item events, folded from the latest snapshot.
"""

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class WorkflowStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"  # a step actor's breaker paused it; resumed with the actor
    SUCCEEDED = "succeeded"  # every item succeeded
    FAILED = "failed"  # finished, some items failed (on_item_failure = "continue")
    STOPPED = "stopped"  # an item failed with on_item_failure = "stop"
    CANCELLED = "cancelled"  # by an operator


ACTIVE_STATUSES = frozenset({WorkflowStatus.RUNNING, WorkflowStatus.PAUSED})


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowRunRecord:
    """One row of ``workflow_runs``: the run's settings, progress counts and status (upserted;
    changed only by a writer of the same or a later lease ``epoch``)."""

    workflow_run_id: str
    workflow: str
    status: str
    steps: list[str]
    chunk_size: int
    max_parallel: int
    on_item_failure: str
    snapshot_every: int
    item_count: int
    succeeded: int = 0
    failed: int = 0
    wave: int = 0  # the current wave, from 0
    waves: int = 0
    paused_reason: str | None = None
    trigger: str = "submit"
    created_at: float
    finished_at: float | None = None
    updated_at: float
    epoch: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowItemRecord:
    """One row of ``workflow_items``: an item as submitted (inserted once, never changed)."""

    workflow_run_id: str
    item_id: str
    position: int
    input_json: str
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowSnapshot:
    """One row of ``workflow_snapshots``: the run's state after ``events_seen`` of its events.

    ``state`` is :meth:`supervisor.workflows.engine.WorkflowRun.snapshot_state`: the finished
    items as position ranges, the started ones in full, the counts and the wave."""

    workflow_run_id: str
    seq: int
    events_seen: int
    state: dict[str, Any] = field(default_factory=dict)
    created_at: float


WorkflowRecord = WorkflowRunRecord | WorkflowItemRecord | WorkflowSnapshot
