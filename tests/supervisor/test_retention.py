"""``retention_days`` in the batch writer's thread, on a real SQLite store: a backlog goes in
small transactions between record batches, records keep committing meanwhile, and the next
pass waits its turn."""

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from supervisor import retention
from supervisor.records import RunRecord
from supervisor.retention import BATCH_RUNS, DAY_S, Retention
from supervisor.store.base import Pruned
from supervisor.store.sqlite import SqliteStore
from supervisor.writer import BatchWriter
from tests.helpers import wait_for


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(SqliteStore):
    """A real store that remembers what each prune call deleted."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.prunes: list[Pruned] = []

    def prune(self, *, cutoff: float, failed_cutoff: float, limit: int) -> Pruned:
        done = super().prune(cutoff=cutoff, failed_cutoff=failed_cutoff, limit=limit)
        self.prunes.append(done)
        return done


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    store = CountingStore(tmp_path / "store.db")
    store.migrate()
    yield store
    store.close()


def _runs(prefix: str, count: int, age_days: float) -> Sequence[RunRecord]:
    ended = time.time() - age_days * DAY_S
    return [_run(f"{prefix}{n:05d}", ended) for n in range(count)]


def _run(run_id: str, ended: float) -> RunRecord:
    return RunRecord(
        run_id=run_id, attempt=1, actor="job", correlation_id=run_id, trigger="schedule",
        status="succeeded", queued_at=ended - 1, finished_at=ended,
    )  # fmt: skip


def test_the_writer_prunes_a_backlog_in_small_batches_while_records_keep_committing(
    store: CountingStore,
) -> None:
    store.write_batch(_runs("old", 2 * BATCH_RUNS + 50, 40))
    store.write_batch(_runs("young", 3, 1))
    clock = Clock()
    kept = Retention(store, days=30, keep_failed_days=0, monotonic=clock)
    writer = BatchWriter(store, retention=kept)
    writer.start()
    try:
        clock.now += retention.FIRST_PASS_S
        wait_for(lambda: len(store.prunes) == 1, 10, "the first batch")
        # A record put now commits although a backlog is waiting: one batch, then the records.
        seq = writer.put(_runs("new", 1, 0)[0])
        assert writer.flush(timeout=5) and writer.committed >= seq
        assert len(store.prunes) == 1  # the backlog waits BACKLOG_PAUSE_S between batches
        for _ in range(3):
            clock.now += retention.BACKLOG_PAUSE_S
            before = len(store.prunes)
            writer.put(_runs("tick", 1, 0)[0])  # wakes the thread, as the loop's writes do
            wait_for(lambda: len(store.prunes) > before, 10, "the next batch")  # noqa: B023
    finally:
        writer.close(timeout=5)
    assert [p.runs for p in store.prunes] == [BATCH_RUNS, BATCH_RUNS, 50, 0]
    assert kept.total.runs == 2 * BATCH_RUNS + 50
    assert kept.wait_s() == pytest.approx(retention.EVERY_S)  # nothing due: minutes to the next
    left = {r.run_id[:3] for r in store.list_runs(limit=100)}
    assert left == {"you", "new", "tic"}


def test_an_idle_writer_prunes_on_its_own(store: CountingStore) -> None:
    """No record arrives: the thread wakes for the due pass by itself."""
    store.write_batch(_runs("old", 3, 40))
    writer = BatchWriter(store, retention=Retention(store, days=30, keep_failed_days=0))
    writer.start()
    try:
        wait_for(lambda: not store.list_runs(limit=10), retention.FIRST_PASS_S + 10, "pruning")
    finally:
        writer.close(timeout=5)
    assert store.prunes[0].runs == 3
