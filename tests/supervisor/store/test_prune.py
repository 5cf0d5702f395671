"""Retention on both stores: what ``prune`` deletes, what it keeps, and in bounded batches."""

import time
from dataclasses import replace

from supervisor.alerts.records import DELIVERED, FAILED, PENDING, AlertRecord
from supervisor.events import new_id
from supervisor.records import Event, RunRecord, TaskState
from supervisor.store.base import Pruned, Store
from tests.supervisor.store.test_code_history import change

DAY = 86400.0
NOW = time.time()
CUTOFF = NOW - 30 * DAY
FAILED_CUTOFF = NOW - 90 * DAY


def _run(run_id: str, age_days: float, status: str = "succeeded", attempt: int = 1) -> RunRecord:
    ended = NOW - age_days * DAY
    return RunRecord(
        run_id=run_id, attempt=attempt, actor="backup", correlation_id=run_id, trigger="submit",
        status=status, queued_at=ended - 1, started_at=None if status == "queued" else ended - 1,
        finished_at=None if status in ("queued", "running") else ended,
    )  # fmt: skip


def _event(run_id: str, age_days: float, aggregate_type: str = "run") -> Event:
    return Event(
        event_id=new_id(), event_type="run_finished", aggregate_type=aggregate_type,
        aggregate_id=run_id, correlation_id=run_id, created_at=NOW - age_days * DAY,
    )  # fmt: skip


def _alert(status: str, age_days: float) -> AlertRecord:
    at = NOW - age_days * DAY
    return AlertRecord(
        alert_id=new_id(), destination="ops", event="run_failed", actor="backup", run_id="x",
        payload={}, status=status, due_at=at, created_at=at, updated_at=at,
    )  # fmt: skip


def _ids(store: Store) -> set[str]:
    return {r.run_id for r in store.list_runs(limit=1000)}


def test_prune_deletes_old_finished_runs_whole_and_keeps_everything_else(store: Store) -> None:
    store.write_batch(
        [
            _run("old-ok", 40), _event("old-ok", 40), _event("old-ok", 40),
            # retried: attempt 1 failed long ago, the final attempt succeeded 35 days ago
            _run("old-retried", 41, "failed_retryable"), _run("old-retried", 35, attempt=2),
            _event("old-retried", 41),
            _run("young-ok", 5), _event("young-ok", 5),
            _run("failed-60", 60, "failed_permanent"), _event("failed-60", 60),
            _run("failed-100", 100, "failed_permanent"), _event("failed-100", 100),
            _run("queued-old", 50, "queued"), _run("running-old", 50, "running"),
            _event("backup", 400, aggregate_type="actor"),  # not a run's: kept
            TaskState(actor="backup", updated_at=NOW - 400 * DAY),
            _alert(DELIVERED, 40), _alert(FAILED, 40), _alert(FAILED, 100), _alert(PENDING, 400),
        ]
    )  # fmt: skip
    store.record_code_version(change("v1", "initial", changed_at=NOW - 400 * DAY))

    assert store.count_prunable(cutoff=CUTOFF, failed_cutoff=FAILED_CUTOFF) == Pruned(
        runs=3, attempts=4, events=4, alerts=2
    )
    done = store.prune(cutoff=CUTOFF, failed_cutoff=FAILED_CUTOFF, limit=500)

    assert done == Pruned(runs=3, attempts=4, events=4, alerts=2)
    assert _ids(store) == {"young-ok", "failed-60", "queued-old", "running-old"}
    assert {e.aggregate_id for e in store.list_events(limit=100)} == {
        "young-ok", "failed-60", "backup",
    }  # fmt: skip
    assert [a.status for a in store.list_alerts()] == [FAILED, PENDING]  # 40 days, 400 days
    assert store.load_task_states()["backup"].actor == "backup"
    assert len(store.code_history("backup")) == 1
    assert store.prune(cutoff=CUTOFF, failed_cutoff=FAILED_CUTOFF, limit=500) == Pruned()


def test_prune_takes_at_most_limit_runs_per_call_oldest_first(store: Store) -> None:
    store.write_batch([_run(f"r{n:02d}", 40 + n) for n in range(7)])
    first = store.prune(cutoff=CUTOFF, failed_cutoff=CUTOFF, limit=3)
    assert first == Pruned(runs=3, attempts=3)
    assert _ids(store) == {"r00", "r01", "r02", "r03"}  # the three oldest went first
    assert store.prune(cutoff=CUTOFF, failed_cutoff=CUTOFF, limit=3).runs == 3
    assert store.prune(cutoff=CUTOFF, failed_cutoff=CUTOFF, limit=3).runs == 1
    assert not store.prune(cutoff=CUTOFF, failed_cutoff=CUTOFF, limit=3)


def test_a_failed_run_is_never_kept_shorter_than_the_others(store: Store) -> None:
    """A --keep-failed shorter than --older-than (a later failed cut-off) counts as as long."""
    store.write_batch(
        [_run("failed-40", 40, "failed_permanent"), _run("failed-20", 20, "failed_permanent")]
    )
    done = store.prune(cutoff=CUTOFF, failed_cutoff=NOW - 10 * DAY, limit=10)
    assert done.runs == 1 and _ids(store) == {"failed-20"}


def test_an_alert_row_is_untouched_by_a_later_pending_version(store: Store) -> None:
    """A pending alert, however old, is never deleted: it is still to be delivered."""
    pending = _alert(PENDING, 400)
    store.write_batch([pending])
    store.prune(cutoff=CUTOFF, failed_cutoff=FAILED_CUTOFF, limit=10)
    assert [a.alert_id for a in store.pending_alerts()] == [pending.alert_id]
    store.save_alert(replace(pending, status=DELIVERED, delivered_at=NOW, updated_at=NOW))
    assert store.prune(cutoff=CUTOFF, failed_cutoff=FAILED_CUTOFF, limit=10).alerts == 1
