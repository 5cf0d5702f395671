"""The on-disk spool and the batch writer's outage path, against a real SQLite store that another
connection locks (SQLite's ``StoreUnavailable``); the real PostgreSQL outage is in
``test_outage.py``."""

import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.outcomes import RunStatus
from supervisor.records import ActorRecord, Record, RunRecord, TaskState
from supervisor.spool import Spool, SpoolError, decode_batch, encode_batch, spool_folder
from supervisor.store.base import StoreUnavailable
from supervisor.store.sqlite import SqliteStore
from supervisor.writer import BatchWriter
from tests.helpers import T0, event, run_record, wait_for


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "store.db", busy_timeout_s=0.05)
    store.migrate()
    yield store
    store.close()


class Lock:
    """Another connection holding SQLite's write lock: the store is unavailable meanwhile."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)

    def __enter__(self) -> "Lock":
        self.conn.execute("BEGIN EXCLUSIVE")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


def stored_event_ids(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT event_id FROM execution_events ORDER BY id")]
    finally:
        conn.close()


# -- the spool file ---------------------------------------------------------------------------


def test_every_record_type_survives_the_spool_field_for_field() -> None:
    records: list[Record] = [
        RunRecord(
            run_id="r-ü", attempt=2, actor="a", correlation_id="c", trigger="retry",
            status=RunStatus.FAILED_RETRYABLE, reason="timeout", input_json='{"x": [1, 2.5]}',
            queued_at=T0, scheduled_for=T0 + 0.000001, started_at=T0 + 1, finished_at=T0 + 2,
            duration_ms=1000.000001, exit_code=None, signal=9, output_json=None,
            stderr_tail="☃\n", error="boom", code_sha256="ab" * 32, worker_id="w1",
            idempotency_key="k", utime_s=0.1, stime_s=0.2, maxrss_kb=2**40,
        ),
        event(1, correlation_id=None, metadata={"nested": {"l": [None, True, 0.1 + 0.2]}}),
        TaskState(actor="a", last_run_at=None, next_run_at=T0, consecutive_failures=3,
                  is_paused=True, paused_reason="breaker", metadata={"k": "v"}, updated_at=T0),
        ActorRecord(name="a", script_path="/s.py", code_sha256="cd" * 32,
                    schedule={"type": "interval", "seconds": 1.5}, config={}, updated_at=T0),
    ]  # fmt: skip
    decoded = decode_batch(encode_batch(records))
    assert decoded == records
    assert [type(r) for r in decoded] == [type(r) for r in records]


def test_spooled_batches_are_counted_kept_across_reopening_and_replayed_in_order(
    tmp_path: Path, store: SqliteStore
) -> None:
    spool = Spool(tmp_path / "spool")
    assert not spool.pending
    assert spool.append([event(1), event(2)], only_if_pending=True) is False  # empty: not taken
    spool.append([event(1), event(2)])
    spool.append([run_record("r1"), event(3)])
    assert (
        spool.append([run_record("r1", status=RunStatus.SUCCEEDED)], only_if_pending=True) is True
    )
    stats = spool.stats()
    assert (stats.records, stats.batches, stats.appended) == (5, 3, 5) and stats.bytes > 0
    spool.close()

    reopened = Spool(tmp_path / "spool")  # a restart
    again = reopened.stats()
    assert reopened.pending and (again.records, again.batches, again.bytes) == (
        stats.records,
        stats.batches,
        stats.bytes,
    )
    reopened.append([event(4)])  # a new segment after the old one
    assert len(list((tmp_path / "spool").glob("*.spool"))) == 2

    assert reopened.replay(store) == 6
    assert stored_event_ids(store.path) == ["e1", "e2", "e3", "e4"]
    assert [r.status for r in store.list_runs()] == [RunStatus.SUCCEEDED]  # the last version
    assert not reopened.pending and reopened.stats().records == 0
    assert (reopened.stats().appended, reopened.stats().replayed) == (1, 6)
    assert list((tmp_path / "spool").glob("*.spool")) == []
    reopened.close()


def test_a_torn_last_frame_is_dropped_and_the_rest_replayed(
    tmp_path: Path, store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append([event(1)])
    spool.append([event(2)])
    spool.close()
    (segment,) = (tmp_path / "spool").glob("*.spool")
    one_frame = segment.read_bytes()[: segment.stat().st_size // 2]
    with open(segment, "ab") as handle:  # a crash in the middle of the third append
        handle.write(one_frame[:-5])

    reopened = Spool(tmp_path / "spool")
    assert reopened.stats().records == 2
    assert "dropping" in caplog.text and segment.name in caplog.text
    assert reopened.replay(store) == 2
    assert stored_event_ids(store.path) == ["e1", "e2"]
    reopened.close()


def test_one_process_at_a_time(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    try:
        with pytest.raises(SpoolError, match=rf"in use by another process \(pid {os.getpid()}\)"):
            Spool(tmp_path / "spool")
    finally:
        spool.close()
    Spool(tmp_path / "spool").close()  # released by close


def test_replay_resumes_where_it_stopped_and_writes_each_record_once(
    tmp_path: Path, store: SqliteStore
) -> None:
    spool = Spool(tmp_path / "spool")
    for n in range(0, 100, 10):
        spool.append([event(i) for i in range(n, n + 10)])

    def two_chunks() -> bool:  # stop after two chunks, as a closing writer does
        return len(stored_event_ids(store.path)) < 50

    assert spool.replay(store, chunk_records=25, keep_going=two_chunks) == 60
    assert spool.stats().records == 40 and spool.pending

    with Lock(store.path), pytest.raises(StoreUnavailable):
        spool.replay(store, chunk_records=25)
    assert spool.stats().records == 40

    assert spool.replay(store, chunk_records=25) == 40
    assert stored_event_ids(store.path) == [f"e{n}" for n in range(100)]
    spool.close()


def test_drain_gives_up_after_its_time_and_keeps_the_spool(
    tmp_path: Path, store: SqliteStore
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append([event(1)])
    with Lock(store.path):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="kept for the next start"):
            spool.drain(store, give_up_s=0.5)
        assert time.monotonic() - started < 5
    assert spool.stats().records == 1
    assert spool.drain(store, give_up_s=5) == 1
    assert stored_event_ids(store.path) == ["e1"]
    spool.close()


def test_spool_folder_is_relative_to_the_config_folder(tmp_path: Path) -> None:
    assert spool_folder("state/spool", tmp_path) == tmp_path / "state" / "spool"
    assert spool_folder("/var/spool/as", tmp_path) == Path("/var/spool/as")


# -- the writer with a spool ------------------------------------------------------------------


@pytest.fixture
def writers() -> Iterator[list[BatchWriter]]:
    made: list[BatchWriter] = []
    yield made
    for writer in made:
        writer.close(timeout=5)


def spooling_writer(
    writers: list[BatchWriter], store: SqliteStore, folder: Path, **options: object
) -> BatchWriter:
    writer = BatchWriter(
        store,
        spool=Spool(folder),
        backoff_initial_s=0.02,
        backoff_max_s=0.1,
        **options,  # type: ignore[arg-type]
    )
    writers.append(writer)
    writer.start()
    return writer


@pytest.mark.timeout(30)
def test_a_healthy_store_is_written_directly(
    tmp_path: Path, store: SqliteStore, writers: list[BatchWriter]
) -> None:
    writer = spooling_writer(writers, store, tmp_path / "spool")
    for n in range(50):
        writer.put(event(n))
    assert writer.flush(10)
    stats = writer.stats()
    assert (stats.spooled, stats.spool_depth, stats.degraded) == (0, 0, False)
    assert stored_event_ids(store.path) == [f"e{n}" for n in range(50)]


@pytest.mark.timeout(30)
def test_while_the_store_is_down_batches_are_spooled_durable_then_replayed_in_order(
    tmp_path: Path, store: SqliteStore, writers: list[BatchWriter]
) -> None:
    writer = spooling_writer(writers, store, tmp_path / "spool", batch_size=10)
    for n in range(10):
        writer.put(event(n))
    assert writer.flush(10)
    with Lock(store.path):
        for n in range(10, 60):
            writer.put(event(n))
        writer.put(run_record("r1"))
        seq = writer.put(run_record("r1", status=RunStatus.SUCCEEDED))
        wait_for(lambda: writer.committed >= seq, 10, "the batch to be spooled")  # store down
        stats = writer.stats()
        assert stats.degraded and stats.spool_depth == 52 and stats.failures >= 1
        assert stored_event_ids(store.path) == [f"e{n}" for n in range(10)]
        for n in range(60, 70):  # newer batches queue up behind the spool
            writer.put(event(n))
        assert writer.flush(10)
        assert writer.stats().spool_depth == 62
    wait_for(lambda: writer.stats().spool_depth == 0, 10, "the spool to empty")
    for n in range(70, 80):
        writer.put(event(n))
    assert writer.flush(10)

    assert stored_event_ids(store.path) == [f"e{n}" for n in range(80)]
    assert [r.status for r in store.list_runs()] == [RunStatus.SUCCEEDED]
    stats = writer.stats()
    assert not stats.degraded and stats.replayed == stats.spooled == 62
    assert list((tmp_path / "spool").glob("*.spool")) == []


@pytest.mark.timeout(30)
def test_closing_while_the_store_is_down_keeps_the_spool_for_the_next_start(
    tmp_path: Path, store: SqliteStore, writers: list[BatchWriter]
) -> None:
    writer = spooling_writer(writers, store, tmp_path / "spool")
    with Lock(store.path):
        for n in range(30):
            writer.put(event(n))
        started = time.monotonic()
        assert writer.close(timeout=10) is True  # spooled counts as written
        assert time.monotonic() - started < 5
    assert stored_event_ids(store.path) == []

    restarted = Spool(tmp_path / "spool")
    assert restarted.stats().records == 30
    assert restarted.drain(store, give_up_s=5) == 30
    assert stored_event_ids(store.path) == [f"e{n}" for n in range(30)]
    restarted.close()


@pytest.mark.timeout(30)
def test_a_record_nothing_can_serialize_is_logged_and_counted_not_retried_forever(
    tmp_path: Path,
    store: SqliteStore,
    writers: list[BatchWriter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = spooling_writer(writers, store, tmp_path / "spool")
    poison = event(2, metadata={"bad": object()})
    for record in (event(1), poison, event(3)):
        writer.put(record)
    assert writer.flush(10)
    wait_for(lambda: writer.stats().spool_depth == 0, 10, "the spool to empty")

    assert stored_event_ids(store.path) == ["e1", "e3"]  # e1 and e3 were spooled, then replayed
    stats = writer.stats()
    assert (stats.rejected, stats.spooled, stats.replayed) == (1, 2, 2)
    rejected = [r for r in caplog.records if r.levelno == logging.ERROR and "serialized" in r.msg]
    assert len(rejected) == 1 and "e2" in rejected[0].getMessage()


@pytest.mark.timeout(30)
def test_upserts_spooled_across_batches_end_in_their_last_version(
    tmp_path: Path, store: SqliteStore, writers: list[BatchWriter]
) -> None:
    writer = spooling_writer(writers, store, tmp_path / "spool", batch_size=1)
    versions = [
        run_record("r1"),
        run_record("r1", status=RunStatus.RUNNING),
        run_record("r1", status=RunStatus.SUCCEEDED),
    ]
    with Lock(store.path):
        for version in versions:
            writer.put(version)
            writer.put(dataclasses.replace(version, run_id="r2"))
        assert writer.flush(10)
    wait_for(lambda: writer.stats().spool_depth == 0, 10, "the spool to empty")
    assert {r.run_id: r.status for r in store.list_runs()} == {
        "r1": RunStatus.SUCCEEDED,
        "r2": RunStatus.SUCCEEDED,
    }
