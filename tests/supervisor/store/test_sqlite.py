"""SQLite-specific behaviour: WAL, concurrent readers, file placement, URLs, error translation."""

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.errors import ConfigError
from supervisor.records import ActorRecord, Event, Record
from supervisor.store import open_store, redact_url
from supervisor.store.base import StoreError, StoreUnavailable
from supervisor.store.sqlite import SqliteStore, from_text, to_text
from tests.helpers import T0
from tests.helpers import run_record as run


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "store.db")
    store.migrate()
    yield store
    store.close()


def raw(path: Path) -> sqlite3.Connection:
    """A plain second connection, as another process (the CLI, an operator) would have."""
    return sqlite3.connect(path, isolation_level=None, timeout=0.05)


# -- connection settings ----------------------------------------------------------------------


def test_wal_mode_is_on_and_persistent(sqlite_store: SqliteStore) -> None:
    other = raw(sqlite_store.path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()
    assert sqlite_store.settings()["journal_mode"] == "wal"


@pytest.mark.parametrize("level", ["off", "normal", "full", "EXTRA"])
def test_synchronous_comes_from_the_argument(tmp_path: Path, level: str) -> None:
    store = open_store("sqlite:s.db", base_dir=tmp_path, sqlite_synchronous=level)
    try:
        assert store.settings()["synchronous"] == level.lower()  # type: ignore[attr-defined]
    finally:
        store.close()


def test_invalid_synchronous_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sqlite_synchronous"):
        open_store("sqlite:s.db", base_dir=tmp_path, sqlite_synchronous="sometimes")
    assert not (tmp_path / "s.db").exists()


# -- concurrency ------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_reader_is_not_blocked_by_an_open_write_transaction(sqlite_store: SqliteStore) -> None:
    sqlite_store.write_batch([run("committed")])
    writer = raw(sqlite_store.path)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute(
        'INSERT INTO runs (run_id, attempt, actor, correlation_id, "trigger", status, '
        "input_json, queued_at, stderr_tail, code_sha256) "
        "VALUES ('uncommitted', 1, 'a', 'c', 't', 'queued', 'null', ?, '', '')",
        (to_text(T0),),
    )
    reader = SqliteStore(sqlite_store.path, busy_timeout_s=0.05)
    try:
        started = time.monotonic()
        assert [r.run_id for r in reader.list_runs()] == ["committed"]
        assert time.monotonic() - started < 1.0
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        reader.close()


@pytest.mark.timeout(30)
def test_second_connection_reads_while_the_writer_writes(sqlite_store: SqliteStore) -> None:
    reader = SqliteStore(sqlite_store.path)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for i in range(200):
                batch: list[Record] = [run(f"r{i}-{j}", queued_at=T0 + i) for j in range(20)]
                batch.append(
                    Event(
                        event_id=f"e{i}",
                        event_type="tick",
                        aggregate_type="supervisor",
                        aggregate_id="s",
                        created_at=T0 + i,
                    )
                )
                sqlite_store.write_batch(batch)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            stop.set()

    thread = threading.Thread(target=write)
    thread.start()
    seen: list[int] = []
    try:
        while not stop.is_set():
            seen.append(len(reader.list_runs(limit=10_000)))
    finally:
        thread.join()
        reader.close()

    assert errors == []
    assert seen == sorted(seen)  # every read sees a consistent, growing prefix
    assert all(n % 20 == 0 for n in seen)  # never half a batch
    assert len(sqlite_store.list_runs(limit=10_000)) == 4000


@pytest.mark.timeout(20)
def test_a_checkpoint_waits_for_no_write_and_moves_the_whole_log(sqlite_store: SqliteStore) -> None:
    assert sqlite_store.defer_checkpoints()
    for i in range(20):
        sqlite_store.write_batch([run(f"r{i}")])
    finished = threading.Event()
    with sqlite_store._lock:  # as while the loop writes a batch: the checkpoint goes on
        thread = threading.Thread(target=lambda: (sqlite_store.checkpoint(), finished.set()))
        thread.start()
        assert finished.wait(10), "the checkpoint waited for the store's connection"
        assert sqlite_store.write_batch_now([run("during")])  # and a commit for it
    thread.join()
    sqlite_store.checkpoint()
    # the database file alone, without its log, holds every run: the log was moved into it
    alone = sqlite_store.path.with_name("alone.db")
    alone.write_bytes(sqlite_store.path.read_bytes())
    other = raw(alone)
    try:
        assert other.execute("SELECT count(*) FROM runs").fetchone()[0] == 21
    finally:
        other.close()


def test_a_checkpoint_after_the_file_went_makes_no_new_one(sqlite_store: SqliteStore) -> None:
    sqlite_store.write_batch([run("r")])
    for suffix in ("", "-wal", "-shm"):
        Path(f"{sqlite_store.path}{suffix}").unlink(missing_ok=True)
    sqlite_store.checkpoint()  # nothing to do: the next write reports the missing file
    assert not sqlite_store.path.exists()
    with pytest.raises(StoreUnavailable, match="removed"):
        sqlite_store.write_batch([run("after")])


@pytest.mark.timeout(20)
def test_locked_database_raises_store_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db", busy_timeout_s=0.05)
    store.migrate()
    holder = raw(store.path)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match="locked") as raised:
            store.write_batch([run("r1")])
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.write_batch([run("r1")])  # usable again once the lock is gone
    assert [r.run_id for r in store.list_runs()] == ["r1"]
    store.close()


def test_other_sqlite_errors_raise_store_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "unmigrated.db")
    try:
        with pytest.raises(StoreError, match="no such table") as raised:
            store.write_batch([run("r1")])
        assert not isinstance(raised.value, StoreUnavailable)
        assert isinstance(raised.value.__cause__, sqlite3.Error)
    finally:
        store.close()


@pytest.mark.timeout(20)
def test_store_refuses_use_in_a_forked_child(sqlite_store: SqliteStore) -> None:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sqlite_store.list_runs()
        except StoreError as exc:
            code = 0 if "used in" in str(exc) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sqlite_store.list_runs() == []  # the parent's connection is unharmed


# -- values -----------------------------------------------------------------------------------


def test_timestamps_are_fixed_width_utc_text_with_microseconds(sqlite_store: SqliteStore) -> None:
    sqlite_store.write_batch(
        [run("a", queued_at=T0), run("b", queued_at=1.5), run("c", queued_at=T0 + 0.5)]
    )
    conn = raw(sqlite_store.path)
    try:
        rows = conn.execute("SELECT queued_at FROM runs ORDER BY queued_at").fetchall()
    finally:
        conn.close()

    assert [r[0] for r in rows] == [
        "1970-01-01T00:00:01.500000Z",
        "2025-11-29T15:15:24.123456Z",
        "2025-11-29T15:15:24.623456Z",
    ]
    assert from_text(to_text(T0)) == T0


def test_actor_round_trips_and_keeps_its_created_at(sqlite_store: SqliteStore) -> None:
    first = ActorRecord(
        name="backup",
        script_path="/srv/actors/backup.py",
        code_sha256="a" * 64,
        schedule={"cron": "0 3 * * *", "tz": "Europe/Zürich"},
        config={"retries": 3, "env": ["A", "B"]},
        updated_at=T0,
    )
    on_demand = ActorRecord(name="mail", script_path="/m.py", code_sha256="b" * 64, updated_at=T0)
    sqlite_store.write_batch([first, on_demand])
    changed = ActorRecord(
        name="backup", script_path="/srv/b.py", code_sha256="c" * 64, updated_at=T0 + 60
    )
    sqlite_store.write_batch([changed])

    assert sqlite_store.load_actors() == {"backup": changed, "mail": on_demand}
    conn = raw(sqlite_store.path)
    try:
        row = conn.execute("SELECT created_at, updated_at FROM actors WHERE name = 'backup'")
        assert row.fetchone() == (to_text(T0), to_text(T0 + 60))
    finally:
        conn.close()


# -- URLs -------------------------------------------------------------------------------------


def test_relative_url_creates_the_file_under_base_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    base = tmp_path / "config"
    store = open_store("sqlite:data/nested/store.db", base_dir=base)
    try:
        store.migrate()
        assert (base / "data" / "nested" / "store.db").is_file()
        assert store.description == f"sqlite:{base.resolve() / 'data/nested/store.db'}"
        assert not (elsewhere / "data").exists()
    finally:
        store.close()


@pytest.mark.parametrize("form", ["sqlite:{path}", "sqlite://{path}", "SQLite:{path}"])
def test_absolute_url_forms(tmp_path: Path, form: str) -> None:
    path = tmp_path / "abs" / "store.db"
    store = open_store(form.format(path=path), base_dir=Path("/nonexistent"))
    try:
        assert store.description == f"sqlite:{path}"
        assert path.is_file()
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://app:s3cret@db/supervisor", "unknown scheme 'mysql'"),
        ("store.db", "no scheme"),
        ("sqlite:", "path is empty"),
        ("sqlite://host/store.db", "no host"),
    ],
)
def test_bad_urls_are_config_errors(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        open_store(url, base_dir=tmp_path)
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://app:s3cret@db:5432/sup", "postgresql://app:***@db:5432/sup"),
        ("postgresql://app:p%40ss%3Aw@db/sup", "postgresql://app:***@db/sup"),
        ("postgresql://app:we:ird@pass@db/sup", "postgresql://app:***@db/sup"),
        (
            "postgresql://app@db/sup?password=s3cret&sslmode=require",
            "postgresql://app@db/sup?password=***&sslmode=require",
        ),
        (
            "postgresql://db/sup?sslmode=require&PASSWORD=s3cret",
            "postgresql://db/sup?sslmode=require&PASSWORD=***",
        ),
        (
            "host=db user=app password='s3 cret' dbname=sup",
            "host=db user=app password=*** dbname=sup",
        ),
        ("host=db password=s3cret", "host=db password=***"),
        ("postgresql://app@db/sup", "postgresql://app@db/sup"),
        ("sqlite:/var/lib/store.db", "sqlite:/var/lib/store.db"),
    ],
)
def test_redact_url_removes_every_password(url: str, expected: str) -> None:
    redacted = redact_url(url)
    assert redacted == expected
    assert "s3cret" not in redacted and "s3 cret" not in redacted
