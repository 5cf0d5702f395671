"""The read queries both stores share, written once so their filters and orderings cannot drift.

Like :mod:`supervisor.store.code`, the SQL uses ``?`` placeholders (the PostgreSQL store turns
them into ``%s``), and a timestamp parameter goes through the store's own ``to_db``. Text keys
order the same on both: SQLite compares bytes, and PostgreSQL's key columns are declared
``COLLATE "C"``. Each function returns the SQL and its parameters; the store runs them and turns
the rows into records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocol.outcomes import RunStatus

UNFINISHED = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)

Query = tuple[str, list[Any]]
ToDb = Callable[[float], Any]  # an epoch timestamp as the backend stores it


def list_runs(select: str, *, actor: str | None, run_id: str | None, limit: int) -> Query:
    where, params = _where({"actor = ?": actor, "run_id = ?": run_id})
    order = "queued_at DESC, attempt DESC, run_id DESC"
    return f"{select}{where} ORDER BY {order} LIMIT ?", [*params, _limit(limit)]


def list_events(
    select: str,
    to_db: ToDb,
    *,
    aggregate_type: str | None,
    aggregate_id: str | None,
    correlation_id: str | None,
    since: float | None,
    limit: int,
) -> Query:
    where, params = _where(
        _event_filters(to_db, aggregate_type, aggregate_id, correlation_id, since)
    )
    return f"{select}{where} ORDER BY created_at, id LIMIT ?", [*params, _limit(limit)]


def find_runs(
    select: str,
    to_db: ToDb,
    *,
    actor: str | None,
    status: str | None,
    since: float | None,
    before: tuple[float, int, str] | None,
    limit: int,
    latest_only: bool = False,
) -> Query:
    """Attempts newest first, like :func:`list_runs`; ``before`` is a keyset cursor: the
    ``(queued_at, attempt, run_id)`` of the last attempt of the previous page. ``latest_only``:
    one row per run, its latest attempt (the other filters apply to that attempt)."""
    conditions: list[str] = []
    keyset_params: list[Any] = []
    if latest_only:  # the primary key (run_id, attempt) answers this per row
        conditions.append(
            "attempt = (SELECT MAX(x.attempt) FROM runs x WHERE x.run_id = runs.run_id)"
        )
    if before is not None:
        at, attempt, run_id = to_db(before[0]), before[1], before[2]
        conditions.append(
            "(queued_at < ? OR (queued_at = ? AND attempt < ?)"
            " OR (queued_at = ? AND attempt = ? AND run_id < ?))"
        )
        keyset_params = [at, at, attempt, at, attempt, run_id]
    filters = {
        "actor = ?": actor,
        "status = ?": status,
        "queued_at >= ?": None if since is None else to_db(since),
    }
    where, params = _where(filters, *conditions)
    order = "queued_at DESC, attempt DESC, run_id DESC"
    return f"{select}{where} ORDER BY {order} LIMIT ?", [*params, *keyset_params, _limit(limit)]


def find_events(
    select: str,
    to_db: ToDb,
    *,
    aggregate_type: str | None,
    aggregate_id: str | None,
    correlation_id: str | None,
    since: float | None,
    before: str | None,
    limit: int,
) -> Query:
    """Events newest first (by time, then insertion order), filtered like :func:`list_events`;
    ``before`` is a keyset cursor: the ``event_id`` of the last event of the previous page,
    whose time and insertion id are looked up by its key."""
    filters = _event_filters(to_db, aggregate_type, aggregate_id, correlation_id, since)
    if before is None:
        where, params = _where(filters)
    else:
        at = "(SELECT created_at FROM execution_events WHERE event_id = ?)"
        position = "(SELECT id FROM execution_events WHERE event_id = ?)"
        where, params = _where(
            filters, f"created_at <= {at} AND (created_at < {at} OR id < {position})"
        )
        params += [before, before, before]
    order = "created_at DESC, id DESC"
    return f"{select}{where} ORDER BY {order} LIMIT ?", [*params, _limit(limit)]


def latest_attempt_per_actor(columns: list[str]) -> Query:
    """Each stored actor's most recent attempt (by queue time), in one statement: one index
    probe per actor (``runs_actor_queued_at``, then the primary key), however many runs there
    are. The run is the one of the actor's last-queued attempt, and the attempt is that run's
    latest (a retry is always queued after the attempt it retries)."""
    names = ", ".join(f'r."{c}"' for c in columns)
    sql = (
        f"SELECT {names} FROM actors a JOIN runs r ON r.run_id = ("
        "SELECT m.run_id FROM runs m WHERE m.actor = a.name"
        " ORDER BY m.queued_at DESC, m.attempt DESC LIMIT 1)"
        " WHERE r.attempt = (SELECT MAX(x.attempt) FROM runs x WHERE x.run_id = r.run_id)"
        " ORDER BY a.name"
    )
    return sql, []


# the key column of each kind of id a command may take, and its table
ID_COLUMNS = {
    "run": ("runs", "run_id"),
    "history": ("actor_code_history", "history_id"),
    "event": ("execution_events", "event_id"),
    "workflow_run": ("workflow_runs", "workflow_run_id"),
}


def ids_with_prefix(kind: str, prefix: str, limit: int) -> Query:
    """Distinct ids of ``kind`` starting with ``prefix``, in order: a key range
    (``prefix <= id < prefix'``, the last character bumped), which each id's unique index
    answers on both backends (unlike LIKE, whose index use depends on collation and pragmas)."""
    table, column = ID_COLUMNS[kind]
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    sql = (
        f"SELECT DISTINCT {column} FROM {table} WHERE {column} >= ? AND {column} < ? "
        f"ORDER BY {column} LIMIT ?"
    )
    return sql, [prefix, upper, _limit(limit)]


def unfinished_runs(select: str, before_epoch: int | None = None) -> Query:
    where, params = "status IN (?, ?)", list[Any](UNFINISHED)
    if before_epoch is not None:
        where, params = f"{where} AND epoch < ?", [*params, before_epoch]
    return f"{select} WHERE {where} ORDER BY queued_at, attempt, run_id", params


def idempotency_keys(to_db: ToDb, since: float) -> Query:
    """Oldest first, so that if a key was ever reused the newest run wins."""
    sql = (
        "SELECT actor, idempotency_key, run_id FROM runs "
        "WHERE idempotency_key IS NOT NULL AND queued_at >= ? "
        "ORDER BY queued_at, attempt, run_id"
    )
    return sql, [to_db(since)]


def _event_filters(
    to_db: ToDb,
    aggregate_type: str | None,
    aggregate_id: str | None,
    correlation_id: str | None,
    since: float | None,
) -> dict[str, Any]:
    return {
        "aggregate_type = ?": aggregate_type,
        "aggregate_id = ?": aggregate_id,
        "correlation_id = ?": correlation_id,
        "created_at >= ?": None if since is None else to_db(since),
    }


def _where(filters: dict[str, Any], *conditions: str) -> Query:
    """`` WHERE a = ? AND b >= ?`` for the filters whose value is not None, then ``conditions``
    (the caller appends their parameters); and the values of those filters."""
    given = {test: value for test, value in filters.items() if value is not None}
    tests = [*given, *conditions]
    if not tests:
        return "", []
    return " WHERE " + " AND ".join(tests), list(given.values())


def _limit(limit: int) -> int:
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return limit
