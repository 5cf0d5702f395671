"""Workflow runs, items and snapshots on either store, written once (as :mod:`.outbox` is).

The SQL uses ``?`` placeholders and runs through a backend's :class:`~.code.CodeDb`, which
converts timestamps. ``workflow_runs`` rows are upserted and fenced by ``epoch``; items and
snapshots are inserted once (a replayed batch changes nothing).
"""

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import orjson

from supervisor.store.code import CodeDb
from supervisor.store.values import clean_text, json_text
from supervisor.workflows.records import (
    WorkflowItemRecord,
    WorkflowRecord,
    WorkflowRunRecord,
    WorkflowSnapshot,
)

_TIMES = frozenset({"created_at", "finished_at", "updated_at"})
_JSON = frozenset({"steps", "state"})


class _Table:
    def __init__(self, name: str, record: type[Any], key: tuple[str, ...], fence: bool) -> None:
        self.record = record
        self.columns = [f.name for f in fields(record)]
        quoted = ", ".join(f'"{c}"' for c in self.columns)
        marks = ", ".join("?" * len(self.columns))
        if fence:
            updates = ", ".join(f'"{c}" = excluded."{c}"' for c in self.columns if c not in key)
            action = f"DO UPDATE SET {updates} WHERE {name}.epoch <= excluded.epoch"
        else:
            action = "DO NOTHING"
        self.insert = (
            f"INSERT INTO {name} ({quoted}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(key)}) {action}"
        )
        self.select = f"SELECT {quoted} FROM {name}"

    def row(self, db: CodeDb, record: Any) -> list[Any]:
        values = []
        for column in self.columns:
            value = getattr(record, column)
            if column in _TIMES:
                value = db.to_db(value)
            elif column in _JSON:
                value = json_text(value)
            else:
                value = clean_text(value)
            values.append(value)
        return values

    def record_from(self, db: CodeDb, row: Sequence[Any]) -> Any:
        values = dict(zip(self.columns, row, strict=True))
        for column in self.columns:
            if column in _TIMES:
                values[column] = db.from_db(values[column])
            elif column in _JSON:
                values[column] = orjson.loads(values[column])
        return self.record(**values)


RUNS = _Table("workflow_runs", WorkflowRunRecord, ("workflow_run_id",), fence=True)
ITEMS = _Table("workflow_items", WorkflowItemRecord, ("workflow_run_id", "item_id"), fence=False)
SNAPSHOTS = _Table("workflow_snapshots", WorkflowSnapshot, ("workflow_run_id", "seq"), False)
_TABLES: dict[type[Any], _Table] = {
    WorkflowRunRecord: RUNS,
    WorkflowItemRecord: ITEMS,
    WorkflowSnapshot: SNAPSHOTS,
}
STEP_COLUMNS = (
    "workflow_run_id", "workflow", "item_id", "step", "execution_order", "run_id", "status",
    "attempts", "duration_ms", "started", "finished", "code_version", "code_sha256",
)  # fmt: skip


def write(db: CodeDb, records: Sequence[WorkflowRecord]) -> None:
    """The batch writer's rows, in batch order; of a run's headers only the batch's last is
    upserted (each is the whole row, and the engine writes one with every item's end)."""
    last_header = {
        r.workflow_run_id: n for n, r in enumerate(records) if type(r) is WorkflowRunRecord
    }
    for n, record in enumerate(records):
        table = _TABLES[type(record)]
        if table is RUNS and last_header[record.workflow_run_id] != n:
            continue
        db.run(table.insert, table.row(db, record))


def runs(
    db: CodeDb, *, active_only: bool = False, workflow: str | None = None, limit: int = 50
) -> list[WorkflowRunRecord]:
    """Workflow runs, newest first; ``active_only``: those running or paused (for a resume)."""
    where, params = [], []
    if active_only:
        where.append("status IN ('running', 'paused')")
    if workflow is not None:
        where.append("workflow = ?")
        params.append(workflow)
    sql = RUNS.select + (" WHERE " + " AND ".join(where) if where else "")
    rows = db.rows(
        f"{sql} ORDER BY created_at DESC, workflow_run_id DESC LIMIT ?", [*params, limit]
    )
    return [RUNS.record_from(db, row) for row in rows]


def run(db: CodeDb, workflow_run_id: str) -> WorkflowRunRecord | None:
    rows = db.rows(f"{RUNS.select} WHERE workflow_run_id = ?", [workflow_run_id])
    return RUNS.record_from(db, rows[0]) if rows else None


def items(db: CodeDb, workflow_run_id: str) -> list[WorkflowItemRecord]:
    rows = db.rows(f"{ITEMS.select} WHERE workflow_run_id = ? ORDER BY position", [workflow_run_id])
    return [ITEMS.record_from(db, row) for row in rows]


def latest_snapshot(db: CodeDb, workflow_run_id: str) -> WorkflowSnapshot | None:
    rows = db.rows(
        f"{SNAPSHOTS.select} WHERE workflow_run_id = ? ORDER BY seq DESC LIMIT 1",
        [workflow_run_id],
    )
    return SNAPSHOTS.record_from(db, rows[0]) if rows else None


def snapshot_count(db: CodeDb, workflow_run_id: str) -> int:
    rows = db.rows("SELECT count(*) FROM workflow_snapshots WHERE workflow_run_id = ?",
                   [workflow_run_id])  # fmt: skip
    return int(rows[0][0])


def steps(db: CodeDb, workflow_run_id: str) -> list[dict[str, Any]]:
    """The ``workflow_steps`` view's rows of one run, by item and order."""
    rows = db.rows(
        f"SELECT {', '.join(STEP_COLUMNS)} FROM workflow_steps WHERE workflow_run_id = ? "
        "ORDER BY item_id, execution_order",
        [workflow_run_id],
    )
    found = []
    for row in rows:
        values = dict(zip(STEP_COLUMNS, row, strict=True))
        values["started"] = db.from_db(values["started"])
        values["finished"] = db.from_db(values["finished"])
        values["execution_order"] = int(values["execution_order"])
        found.append(values)
    return found
