"""The batch writer against a real SQLite store: ordering, durability signals, batching, retries."""

import contextlib
import dataclasses
import logging
import select
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from protocol.outcomes import RunStatus
from supervisor.records import Record, RunRecord
from supervisor.store.sqlite import SqliteStore
from supervisor.writer import CHECKPOINT_EVERY, BatchWriter
from tests.helpers import T0, event, run_record, wait_for


class RecordingStore(SqliteStore):
    """A real SQLite store that also remembers the size of every batch it committed."""

    def __init__(self, path: Path, *, busy_timeout_s: float) -> None:
        super().__init__(path, busy_timeout_s=busy_timeout_s)
        self.sizes: list[int] = []

    def write_batch(self, records: Sequence[Record]) -> None:
        super().write_batch(records)
        self.sizes.append(len(records))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RecordingStore]:
    store = RecordingStore(tmp_path / "store.db", busy_timeout_s=0.05)
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def writers() -> Iterator[list[BatchWriter]]:
    """Writers made by a test; closed at the end even when the test fails."""
    made: list[BatchWriter] = []
    yield made
    for writer in made:
        writer.close(timeout=5)


def make_writer(
    writers: list[BatchWriter],
    store: SqliteStore,
    *,
    start: bool = True,
    batch_size: int = 1000,
    max_age_s: float = 0.02,
    backoff_initial_s: float = 0.05,
    backoff_max_s: float = 5.0,
) -> BatchWriter:
    writer = BatchWriter(
        store,
        batch_size=batch_size,
        max_age_s=max_age_s,
        backoff_initial_s=backoff_initial_s,
        backoff_max_s=backoff_max_s,
    )
    writers.append(writer)
    if start:
        writer.start()
    return writer


def run_versions(run_id: str) -> list[RunRecord]:
    queued = run_record(run_id)
    running = dataclasses.replace(queued, status=RunStatus.RUNNING, started_at=T0 + 1)
    done = dataclasses.replace(running, status=RunStatus.SUCCEEDED, finished_at=T0 + 2)
    return [queued, running, done]


def stored_event_ids(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT event_id FROM execution_events ORDER BY id")]
    finally:
        conn.close()


def readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


# -- ordering and durability signals ----------------------------------------------------------


@pytest.mark.timeout(30)
def test_records_commit_in_order_and_committed_and_wakeup_fd_advance(
    store: RecordingStore, writers: list[BatchWriter]
) -> None:
    writer = make_writer(writers, store)
    fd = writer.wakeup_fd()
    assert not readable(fd, 0) and writer.committed == 0

    for round_ in range(5):
        seqs = [writer.put(event(round_ * 20 + i)) for i in range(20)]
        assert seqs == list(range(round_ * 20 + 1, round_ * 20 + 21))
        # wait the way the supervisor loop does: on the fd, then read ``committed``
        deadline = time.monotonic() + 10
        while writer.committed < seqs[-1] and time.monotonic() < deadline:
            assert readable(fd, 5)
            writer.drain_wakeups()
            durable = len(stored_event_ids(store.path))  # another connection sees them
            assert durable >= writer.committed
        assert writer.committed == seqs[-1]

    writer.drain_wakeups()
    assert not readable(fd, 0)
    assert stored_event_ids(store.path) == [f"e{n}" for n in range(100)]
    stats = writer.stats()
    assert (stats.committed, stats.records, stats.queue_depth, stats.failures) == (100, 100, 0, 0)
    assert stats.last_flush_ms is not None and not stats.degraded


@pytest.mark.timeout(30)
def test_upserts_through_the_writer_keep_the_last_version(
    store: RecordingStore, writers: list[BatchWriter]
) -> None:
    writer = make_writer(writers, store)
    for n in range(50):
        for version in run_versions(f"r{n}"):
            writer.put(version)
    assert writer.flush(10)

    runs = store.list_runs(limit=100)
    assert len(runs) == 50 and {r.status for r in runs} == {RunStatus.SUCCEEDED}


# -- batching ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_batches_are_cut_at_batch_size(store: RecordingStore, writers: list[BatchWriter]) -> None:
    writer = make_writer(writers, store, start=False, batch_size=1000, max_age_s=5.0)
    for n in range(2500):
        writer.put(event(n))
    writer.start()
    assert writer.flush(10)

    assert store.sizes == [1000, 1000, 500]
    stats = writer.stats()
    assert (stats.batches, stats.full_batches) == (3, 2)
    assert stored_event_ids(store.path) == [f"e{n}" for n in range(2500)]


@pytest.mark.timeout(30)
def test_a_steady_producer_is_committed_in_batches_while_it_produces(
    store: RecordingStore, writers: list[BatchWriter]
) -> None:
    """Group commit: each batch is what arrived while the one before it was written, so a
    producer that keeps going sees its records committed as it goes, not all at its end."""
    writer = make_writer(writers, store, batch_size=10**9, max_age_s=0.05)
    produced = 0
    deadline = time.monotonic() + 10.0
    while len(store.sizes) < 3 and time.monotonic() < deadline:
        for _ in range(50):
            writer.put(event(produced))
            produced += 1
        time.sleep(0.001)  # pacing, not synchronisation: a loop's turns, not one endless put
    assert len(store.sizes) >= 3, "no batch was committed while the producer went on"
    assert writer.flush(20)

    stats = writer.stats()
    assert stats.full_batches == 0 and max(store.sizes) < produced
    assert sum(store.sizes) == produced == stats.committed


@pytest.mark.timeout(30)
def test_idle_writer_flushes_at_once_without_waiting_for_age(
    store: RecordingStore, writers: list[BatchWriter]
) -> None:
    writer = make_writer(writers, store, max_age_s=5.0)
    latencies = []
    for n in range(5):
        time.sleep(0.05)  # idle
        started = time.monotonic()
        seq = writer.put(event(n))
        while writer.committed < seq:
            assert readable(writer.wakeup_fd(), 2)
            writer.drain_wakeups()
        latencies.append(time.monotonic() - started)

    assert max(latencies) < 1.0  # far below max_age_s: the writer did not wait for the age rule
    assert writer.stats().idle_batches == 5


@pytest.mark.timeout(30)
def test_records_put_while_held_wake_the_writer_once_when_the_block_ends(
    store: RecordingStore, writers: list[BatchWriter]
) -> None:
    writer = make_writer(writers, store, max_age_s=5.0)
    wait_for(lambda: bool(writer._work._waiters))  # type: ignore[attr-defined]  # idle, waiting
    with writer.held():
        seqs = [writer.put(event(n)) for n in range(3)]
        assert writer._work._waiters  # type: ignore[attr-defined]  # not woken by those puts
    while writer.committed < seqs[-1]:
        assert readable(writer.wakeup_fd(), 5)
        writer.drain_wakeups()

    assert store.sizes == [3]  # woken once, it found the whole turn's records
    assert stored_event_ids(store.path) == ["e0", "e1", "e2"]


@pytest.mark.timeout(30)
def test_an_awake_writer_leaves_a_held_turns_records_until_the_turn_ends(
    store: RecordingStore, writers: list[BatchWriter]
) -> None:
    writer = make_writer(writers, store, start=False, max_age_s=5.0)
    with writer.held():
        seqs = [writer.put(event(n)) for n in range(2)]
        writer.start()  # awake with records queued, in the middle of the turn
        wait_for(lambda: bool(writer._work._waiters))  # type: ignore[attr-defined]
        seqs.append(writer.put(event(2)))
        assert writer.committed == 0 and store.sizes == []
    assert writer.flush(10)

    assert store.sizes == [3]  # the turn's records in one batch, taken when the turn ended
    assert writer.stats().idle_batches == 1


@pytest.mark.timeout(30)
def test_an_ended_turns_records_are_written_while_the_next_turn_is_held(
    store: RecordingStore, writers: list[BatchWriter]
) -> None:
    """Back-to-back turns (a burst taken a chunk per turn) never leave the writer a moment
    between them: each ended turn's records must go while the next is made, or the first
    runs of the burst wait for the whole burst (or for max_age_s)."""
    writer = make_writer(writers, store, start=False, max_age_s=5.0)
    with writer.held():
        first = [writer.put(event(n)) for n in range(3)]
    with writer.held():  # the next turn at once, before the thread even ran
        writer.put(event(3))
        writer.start()
        wait_for(lambda: writer.committed >= first[-1], 4, "the ended turn's records")
        assert store.sizes == [3]  # the ended turn's, without the held turn's record
        writer.put(event(4))
    assert writer.flush(10)
    assert store.sizes == [3, 2]


@pytest.mark.timeout(30)
def test_writing_says_whether_records_still_wait_to_be_durable(
    store: RecordingStore, writers: list[BatchWriter]
) -> None:
    """The loop polls a millisecond instead of not at all while this holds and more fires are
    due, so that the writer thread gets the GIL to commit a burst's first chunks."""
    writer = make_writer(writers, store, start=False)
    assert not writer.writing
    writer.put(event(0))
    assert writer.writing  # put, not yet committed (the thread has not even started)
    writer.start()
    wait_for(lambda: not writer.writing, 5, "the record to be committed")
    assert writer.committed == 1


@pytest.mark.timeout(30)
def test_a_held_turn_does_not_hold_back_a_full_batch(
    store: RecordingStore, writers: list[BatchWriter]
) -> None:
    writer = make_writer(writers, store, batch_size=3, max_age_s=5.0)
    wait_for(lambda: bool(writer._work._waiters))  # type: ignore[attr-defined]  # idle, waiting
    with writer.held():
        for n in range(4):
            writer.put(event(n))
        wait_for(lambda: writer.committed == 3, 10, "the full batch")  # the turn goes on
    assert writer.flush(10)

    assert store.sizes == [3, 1]
    assert writer.stats().full_batches == 1


@pytest.mark.timeout(30)
def test_an_awake_writer_takes_a_held_record_once_it_is_max_age_old(
    store: RecordingStore, writers: list[BatchWriter]
) -> None:
    writer = make_writer(writers, store, start=False, max_age_s=0.05)
    with writer.held():
        writer.put(event(0))
        writer.start()  # awake, with a record the turn holds
        wait_for(lambda: writer.committed == 1, 10, "the record past max_age_s")

    assert store.sizes == [1]
    assert writer.stats().aged_batches == 1


@pytest.mark.timeout(30)
def test_the_writer_thread_is_named_for_the_kernel_too(
    store: RecordingStore, writers: list[BatchWriter]
) -> None:
    make_writer(writers, store)  # top -H and the benchmark's per-thread CPU find it by name

    def names() -> list[str]:
        found = []
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                found.append((task / "comm").read_text().strip())
        return found

    wait_for(lambda: "store-writer" in names(), 5, "the thread to name itself as it starts")


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_locked_store_is_retried_until_every_record_lands_exactly_once(
    store: RecordingStore, writers: list[BatchWriter], caplog: pytest.LogCaptureFixture
) -> None:
    writer = make_writer(writers, store, backoff_initial_s=0.01, backoff_max_s=0.1)
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the database
    try:
        for n in range(30):
            writer.put(event(n))
        wait_for(lambda: writer.stats().failures >= 3, 10, "three failed writes")
        stats = writer.stats()
        assert stats.degraded and stats.committed == 0 and "locked" in (stats.last_error or "")
        for n in range(30, 60):  # put keeps accepting while the store is down
            writer.put(event(n))
        for version in run_versions("r1"):
            writer.put(version)
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    assert writer.flush(10)
    assert stored_event_ids(store.path) == [f"e{n}" for n in range(60)]
    assert [r.status for r in store.list_runs()] == [RunStatus.SUCCEEDED]
    stats = writer.stats()
    assert not stats.degraded and stats.committed == 63 and stats.failures >= 3
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert len(failures) == stats.failures


@pytest.mark.timeout(30)
def test_non_transient_errors_are_retried_too(tmp_path: Path, writers: list[BatchWriter]) -> None:
    unmigrated = SqliteStore(tmp_path / "late.db")
    writer = make_writer(writers, unmigrated, backoff_initial_s=0.01, backoff_max_s=0.05)
    try:
        writer.put(event(1))
        wait_for(lambda: writer.stats().failures >= 2, 10, "two failed writes")
        assert "no such table" in (writer.stats().last_error or "")

        operator = SqliteStore(tmp_path / "late.db")  # an operator runs `migrate` meanwhile
        operator.migrate()
        operator.close()

        assert writer.flush(10)
        assert stored_event_ids(tmp_path / "late.db") == ["e1"]
    finally:
        writer.close(5)
        unmigrated.close()


# -- closing and threads ----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_close_flushes_everything_then_refuses_records(
    store: RecordingStore, writers: list[BatchWriter]
) -> None:
    writer = make_writer(writers, store, batch_size=100)
    for n in range(3000):
        writer.put(event(n))

    assert writer.close(timeout=10) is True
    assert len(stored_event_ids(store.path)) == 3000
    assert writer.stats().queue_depth == 0
    with pytest.raises(RuntimeError):
        writer.put(event(9999))


@pytest.mark.timeout(30)
def test_close_gives_up_after_its_timeout_when_the_store_stays_down(
    store: RecordingStore, writers: list[BatchWriter], caplog: pytest.LogCaptureFixture
) -> None:
    writer = make_writer(writers, store, backoff_initial_s=0.01, backoff_max_s=0.05)
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for n in range(10):
            writer.put(event(n))
        started = time.monotonic()
        assert writer.close(timeout=0.5) is False
        assert time.monotonic() - started < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert writer.stats().queue_depth == 10
    assert any("10 records unwritten" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(30)
def test_put_from_several_threads(store: RecordingStore, writers: list[BatchWriter]) -> None:
    writer = make_writer(writers, store, batch_size=64)
    per_thread: dict[int, list[int]] = {}
    start = threading.Barrier(8)

    def produce(t: int) -> None:
        start.wait()
        per_thread[t] = [writer.put(event(t * 1000 + i)) for i in range(250)]

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.flush(10)

    seqs = [seq for t in per_thread for seq in per_thread[t]]
    assert sorted(seqs) == list(range(1, 2001))
    assert all(s == sorted(s) for s in per_thread.values())
    ids = stored_event_ids(store.path)
    assert len(ids) == len(set(ids)) == 2000
    for t in range(8):  # each thread's records are stored in the order it put them
        mine = [int(i[1:]) for i in ids if int(i[1:]) // 1000 == t]
        assert mine == sorted(mine)


class CheckpointCountingStore(RecordingStore):
    """Remembers which thread checkpointed it."""

    def __init__(self, path: Path, *, busy_timeout_s: float) -> None:
        super().__init__(path, busy_timeout_s=busy_timeout_s)
        self.checkpoints: list[str] = []

    def checkpoint(self) -> None:
        super().checkpoint()
        self.checkpoints.append(threading.current_thread().name)


@pytest.mark.timeout(30)
def test_the_loop_commits_its_turn_itself_and_leaves_checkpoints_to_the_thread(
    tmp_path: Path, writers: list[BatchWriter]
) -> None:
    """A healthy SQLite store takes the turn's batch on the loop's own thread as the turn ends
    (no hand-off to the writer thread), in order; the log's checkpoints, which may wait on the
    disk, are the writer thread's, every CHECKPOINT_EVERY commits."""
    store = CheckpointCountingStore(tmp_path / "store.db", busy_timeout_s=5.0)
    store.migrate()
    try:
        writer = make_writer(writers, store)
        for n_turn in range(CHECKPOINT_EVERY + 1):
            with writer.held() as turn:
                last = [writer.put(event(f"{n_turn}-{n}")) for n in range(3)][-1]
            assert writer.committed == last  # durable when the turn's block ends
            assert turn.committed  # and the loop is told so, instead of being woken
            assert not readable(writer.wakeup_fd(), 0)
        assert store.sizes == [3] * (CHECKPOINT_EVERY + 1)
        wait_for(lambda: store.checkpoints == ["store-writer"], 10, "the thread's checkpoint")
        ids = [e.event_id for e in store.list_events(limit=1000)]
        assert sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) == ids  # in order
        assert writer.stats().idle_batches == CHECKPOINT_EVERY + 1
    finally:
        store.close()


@pytest.mark.timeout(30)
def test_a_locked_database_leaves_the_turn_to_the_thread_without_waiting(
    store: RecordingStore, tmp_path: Path, writers: list[BatchWriter]
) -> None:
    """Another process holding SQLite's write lock (a CLI deploy, a prune): the loop must not
    wait out the busy timeout at the end of its turn; the thread writes once the lock is gone."""
    slow = RecordingStore(tmp_path / "store.db", busy_timeout_s=30.0)
    other = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    try:
        writer = make_writer(writers, slow)
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with writer.held() as turn:
            seq = writer.put(event("locked"))
        assert time.monotonic() - started < 10  # not the 30 s busy timeout
        assert writer.committed < seq and slow.sizes == [] and not turn.committed
        other.execute("COMMIT")
        assert readable(writer.wakeup_fd(), 20)  # the thread's commit wakes the loop
        assert writer.committed >= seq
        assert slow.sizes == [1] and writer.stats().failures == 0
        assert slow.settings()["busy_timeout_ms"] == 30_000  # the thread's writes wait again
    finally:
        other.close()
        slow.close()


@pytest.mark.timeout(30)
def test_a_reader_on_the_connection_leaves_the_turn_to_the_thread(
    store: RecordingStore, writers: list[BatchWriter]
) -> None:
    """Another thread of ours on the store's connection (a read): the loop does not queue up
    behind it; the writer thread commits the turn once the connection is free."""
    writer = make_writer(writers, store)
    holding, release = threading.Event(), threading.Event()

    def read() -> None:
        with store._lock:  # what a read holds
            holding.set()
            release.wait(10)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert holding.wait(10)
        with writer.held():
            seq = writer.put(event("behind-a-read"))
        assert writer.committed < seq
    finally:
        release.set()
        reader.join()
    wait_for(lambda: writer.committed >= seq, 10, "the thread's write")
    assert store.sizes == [1]
