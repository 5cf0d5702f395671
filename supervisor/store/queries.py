"""The read queries both stores share, written once so their filters and orderings cannot drift.

A :class:`Dialect` says how a backend spells a parameter and how it stores a timestamp. Text
keys order the same on both: SQLite compares bytes, and PostgreSQL's key columns are declared
``COLLATE "C"``. Each function returns the SQL and its parameters; the store runs them and turns
the rows into records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from supervisor.records import RunState

UNFINISHED = (RunState.QUEUED.value, RunState.RUNNING.value)


@dataclass(frozen=True)
class Dialect:
    param: str  # "?" or "%s"
    time: Callable[[float], Any]  # a timestamp as the backend stores it


Query = tuple[str, list[Any]]


def list_runs(
    d: Dialect, select: str, *, actor: str | None, run_id: str | None, limit: int
) -> Query:
    where, params = _where(d, {"actor = ": actor, "run_id = ": run_id})
    order = "queued_at DESC, attempt DESC, run_id DESC"
    return f"{select}{where} ORDER BY {order} LIMIT {d.param}", [*params, _limit(limit)]


def list_events(
    d: Dialect,
    select: str,
    *,
    aggregate_type: str | None,
    aggregate_id: str | None,
    correlation_id: str | None,
    since: float | None,
    limit: int,
) -> Query:
    filters = {
        "aggregate_type = ": aggregate_type,
        "aggregate_id = ": aggregate_id,
        "correlation_id = ": correlation_id,
        "created_at >= ": None if since is None else d.time(since),
    }
    where, params = _where(d, filters)
    return f"{select}{where} ORDER BY created_at, id LIMIT {d.param}", [*params, _limit(limit)]


def unfinished_runs(d: Dialect, select: str) -> Query:
    where = f" WHERE status IN ({d.param}, {d.param})"
    return f"{select}{where} ORDER BY queued_at, attempt, run_id", list(UNFINISHED)


def idempotency_keys(d: Dialect, since: float) -> Query:
    """Oldest first, so that if a key was ever reused the newest run wins."""
    sql = (
        "SELECT actor, idempotency_key, run_id FROM runs "
        f"WHERE idempotency_key IS NOT NULL AND queued_at >= {d.param} "
        f"ORDER BY queued_at, attempt, run_id"
    )
    return sql, [d.time(since)]


def _where(d: Dialect, filters: dict[str, Any]) -> Query:
    """`` WHERE a = ? AND b >= ?`` for the filters whose value is not None, and those values."""
    given = {test: value for test, value in filters.items() if value is not None}
    if not given:
        return "", []
    return " WHERE " + " AND ".join(test + d.param for test in given), list(given.values())


def _limit(limit: int) -> int:
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return limit
