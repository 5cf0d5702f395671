"""Retention: delete finished runs and their events past a cut-off, a small batch at a time.

A run goes as a whole -- every attempt and every event of it -- once its last attempt ended
before the cut-off: ``failed_cutoff`` for a run whose last attempt failed (kept longer, for the
post-mortem), ``cutoff`` for any other final status. A run with an attempt still queued or
running is never touched, and neither is anything that is not a run: code history
(``actor_code_history``), actors and their scheduling state, supervisor and actor events, and
undelivered (pending) alerts. Delivered and failed alerts go with the same cut-offs.

Like :mod:`supervisor.store.outbox`, the SQL uses ``?`` placeholders and runs through a
backend's :class:`~supervisor.store.code.CodeDb`, so both stores share it. Each call is one
transaction of at most ``limit`` runs (the index ``runs_finished_at``, migration 0007, finds
them oldest first), so the writer can prune between batches without holding the store long.
"""

from supervisor.store.base import Pruned
from supervisor.store.code import CodeDb

FAILED = ("failed_retryable", "failed_permanent")  # a run that ended so is kept longer
_LIVE = ("queued", "running")

# The last attempts of runs due for pruning. The last attempt is final, so no earlier one can
# be in flight (retries are sequential). Parameters: cutoff, failed_cutoff.
_DUE_WHERE = (
    "WHERE r.finished_at < ? "
    f"AND r.status NOT IN ({', '.join(repr(s) for s in _LIVE)}) "
    f"AND (r.status NOT IN ({', '.join(repr(s) for s in FAILED)}) OR r.finished_at < ?) "
    "AND NOT EXISTS (SELECT 1 FROM runs n WHERE n.run_id = r.run_id AND n.attempt > r.attempt)"
)
_DUE = f"SELECT r.run_id FROM runs r {_DUE_WHERE} ORDER BY r.finished_at LIMIT ?"
_ALERTS_WHERE = (
    "WHERE created_at < ? AND (status = 'delivered' OR (status = 'failed' AND created_at < ?))"
)
_DONE_ALERTS = f"SELECT alert_id FROM alert_outbox {_ALERTS_WHERE} ORDER BY created_at LIMIT ?"
_COUNTS = (
    f"SELECT (SELECT count(*) FROM runs r {_DUE_WHERE}), "
    f"(SELECT count(*) FROM runs WHERE run_id IN (SELECT r.run_id FROM runs r {_DUE_WHERE})), "
    "(SELECT count(*) FROM execution_events WHERE aggregate_type = 'run' AND aggregate_id IN "
    f"(SELECT r.run_id FROM runs r {_DUE_WHERE})), "
    f"(SELECT count(*) FROM alert_outbox {_ALERTS_WHERE})"
)


def prune_batch(db: CodeDb, *, cutoff: float, failed_cutoff: float, limit: int) -> Pruned:
    """Delete at most ``limit`` due runs (with their attempts and events) and ``limit`` done
    alerts; an empty result means nothing is due.

    ``failed_cutoff`` later than ``cutoff`` is taken as ``cutoff``: a failed run is never kept
    shorter than any other.
    """
    times = (db.to_db(cutoff), db.to_db(min(failed_cutoff, cutoff)))
    due = [row[0] for row in db.rows(_DUE, (*times, limit))]
    alerts = [row[0] for row in db.rows(_DONE_ALERTS, (*times, limit))]
    events = _deleted(
        db, "DELETE FROM execution_events WHERE aggregate_type = 'run' AND aggregate_id", due
    )
    attempts = _deleted(db, "DELETE FROM runs WHERE run_id", due)
    _deleted(db, "DELETE FROM alert_outbox WHERE alert_id", alerts)
    return Pruned(len(due), attempts, events, len(alerts))


def count_due(db: CodeDb, *, cutoff: float, failed_cutoff: float) -> Pruned:
    """What :func:`prune_batch` calls would delete, in all (``prune --dry-run``)."""
    times = (db.to_db(cutoff), db.to_db(min(failed_cutoff, cutoff)))
    runs, attempts, events, alerts = db.rows(_COUNTS, times * 4)[0]
    return Pruned(int(runs), int(attempts), int(events), int(alerts))


def _deleted(db: CodeDb, delete_where: str, ids: list[str]) -> int:
    """``DELETE ... WHERE column IN (ids)``; the number of rows deleted."""
    if not ids:
        return 0
    marks = ", ".join("?" * len(ids))
    return len(db.rows(f"{delete_where} IN ({marks}) RETURNING 1", ids))
