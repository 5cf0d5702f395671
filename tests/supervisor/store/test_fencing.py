"""Fencing and unique fires (issue 9), on both stores: the store itself refuses what a
supervisor that lost its lease might still try to write."""

from dataclasses import replace

from supervisor.records import RunRecord
from supervisor.store.base import Store
from tests.helpers import event


def fire(run_id: str, epoch: int, scheduled_for: float = 1000.0) -> RunRecord:
    return RunRecord(
        run_id=run_id, attempt=1, actor="tick", correlation_id=run_id, trigger="schedule",
        queued_at=scheduled_for, scheduled_for=scheduled_for, epoch=epoch,
    )  # fmt: skip


def test_a_fire_claimed_twice_is_refused_without_failing_the_batch(store: Store) -> None:
    store.write_batch([fire("a", epoch=1)])
    assert store.refused.take() == []
    store.write_batch([fire("b", epoch=2), event("e1"), fire("c", epoch=2, scheduled_for=2000.0)])
    assert store.refused.take() == ["b"]
    stored = {r.run_id: r for r in store.list_runs(actor="tick")}
    assert set(stored) == {"a", "c"}
    assert [e.event_id for e in store.list_events()] == ["e1"]


def test_the_claimer_updates_its_own_fire_and_replays_are_harmless(store: Store) -> None:
    first = fire("a", epoch=3)
    store.write_batch([first])
    running = replace(first, status="running", worker_id="w1")
    store.write_batch([running])
    store.write_batch([first, running])  # a replayed spool batch
    assert store.refused.take() == []
    (row,) = store.list_runs(actor="tick")
    assert (row.status, row.worker_id, row.epoch) == ("running", "w1", 3)


def test_a_stale_epoch_cannot_change_a_newer_epochs_run(store: Store) -> None:
    submitted = RunRecord(
        run_id="r", attempt=1, actor="tick", correlation_id="r", trigger="submit",
        queued_at=1.0, status="running", epoch=5,
    )  # fmt: skip
    store.write_batch([submitted])
    recovered = replace(submitted, status="failed_retryable", reason="supervisor_lost", epoch=6)
    store.write_batch([recovered])
    store.write_batch([replace(submitted, status="succeeded", epoch=5)])  # the stale one
    (row,) = store.list_runs(run_id="r")
    assert (row.status, row.epoch) == ("failed_retryable", 6)
    assert store.unfinished_runs(before_epoch=7) == []
    store.write_batch([replace(recovered, attempt=2, status="queued", epoch=6)])
    assert [r.attempt for r in store.unfinished_runs(before_epoch=7)] == [2]
    assert store.unfinished_runs(before_epoch=6) == []
