"""The alert outbox (``alert_outbox``) on either store, written once.

Like :mod:`supervisor.store.code`, the SQL uses ``?`` placeholders and runs through a backend's
:class:`~supervisor.store.code.CodeDb`, which converts timestamps. Two writers touch a row:

- the batch writer (:func:`write`), in the transaction of the event that caused the alert: it
  inserts the row, or -- a folded repeat counting up -- updates ``payload``/``count`` of a row
  that is still ``pending``;
- the alert sender (:func:`save`), which owns the delivery columns. It may save a row the store
  has not seen yet (delivered from memory while the database was down and the row waited in the
  spool): the spooled insert that arrives later then finds it no longer pending and changes
  nothing, so a delivered alert is never sent again.
"""

from collections.abc import Sequence
from typing import Any

import orjson

from supervisor.alerts.records import PENDING, AlertRecord
from supervisor.store.code import CodeDb
from supervisor.store.values import clean_text, json_text

COLUMNS = (
    "alert_id", "destination", "event", "actor", "run_id", "payload", "count", "status",
    "attempts", "due_at", "created_at", "updated_at", "delivered_at", "last_error",
)  # fmt: skip
_TIMES = frozenset({"due_at", "created_at", "updated_at", "delivered_at"})
_INSERT = (
    f"INSERT INTO alert_outbox ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    "ON CONFLICT (alert_id) DO UPDATE SET "
)
_WRITE = (
    _INSERT + "payload = excluded.payload, count = excluded.count, "
    "updated_at = excluded.updated_at WHERE alert_outbox.status = 'pending'"
)
_SAVE = (
    _INSERT + "status = excluded.status, attempts = excluded.attempts, "
    "due_at = excluded.due_at, updated_at = excluded.updated_at, "
    "delivered_at = excluded.delivered_at, last_error = excluded.last_error"
)
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM alert_outbox"


def write(db: CodeDb, alerts: Sequence[AlertRecord]) -> None:
    """The batch writer's insert (or pending-only count update) of each row, in order."""
    for alert in alerts:
        db.run(_WRITE, _row(db, alert))


def save(db: CodeDb, alert: AlertRecord) -> None:
    """The sender's record of a delivery attempt (inserting the row if it is not there yet)."""
    db.run(_SAVE, _row(db, alert))


def pending(db: CodeDb, limit: int) -> list[AlertRecord]:
    """Rows still to deliver, earliest due first."""
    sql = f"{_SELECT} WHERE status = ? ORDER BY due_at, alert_id LIMIT ?"
    rows = db.rows(sql, [PENDING, limit])
    return [_record(db, row) for row in rows]


def listing(
    db: CodeDb, *, status: str | None, destination: str | None, limit: int
) -> list[AlertRecord]:
    """Rows newest first, optionally of one status or destination."""
    given = {"status = ?": status, "destination = ?": destination}
    where = [test for test, value in given.items() if value is not None]
    sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
    params: list[Any] = [value for value in given.values() if value is not None]
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    rows = db.rows(f"{sql} ORDER BY created_at DESC, alert_id DESC LIMIT ?", [*params, limit])
    return [_record(db, row) for row in rows]


def _row(db: CodeDb, alert: AlertRecord) -> list[Any]:
    values: list[Any] = []
    for column in COLUMNS:
        value = getattr(alert, column)
        if column in _TIMES:
            value = db.to_db(value)
        elif column == "payload":
            value = json_text(value)
        else:
            value = clean_text(value)
        values.append(value)
    return values


def _record(db: CodeDb, row: Sequence[Any]) -> AlertRecord:
    values = dict(zip(COLUMNS, row, strict=True))
    for column in _TIMES:
        values[column] = db.from_db(values[column])
    values["payload"] = orjson.loads(values["payload"])
    return AlertRecord(**values)
