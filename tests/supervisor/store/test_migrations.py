"""Migrations: applied once, in order, atomically, from several processes; and the catalog they
build matches what the store code expects (Procrastinate's migration tests, for SQLite)."""

import dataclasses
import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.alerts.records import AlertRecord
from supervisor.code.book import sync_actor
from supervisor.code.records import CodeChange, CodeVersion
from supervisor.config import load_config
from supervisor.records import ActorRecord, Event, RunRecord, TaskState
from supervisor.store.base import SchemaTooNew, StoreError
from supervisor.store.migrations import (
    apply_sqlite,
    load_migrations,
    parse_migrations,
    split_statements,
    sql_root,
)
from supervisor.store.sqlite import SqliteStore, to_text
from supervisor.workflows.records import WorkflowItemRecord, WorkflowRunRecord, WorkflowSnapshot


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, timeout=5)


def applied_rows(path: Path) -> list[tuple[int, str]]:
    conn = connect(path)
    try:
        return conn.execute(
            "SELECT version, name FROM schema_migrations ORDER BY version"
        ).fetchall()
    finally:
        conn.close()


def now() -> str:
    return to_text(time.time())


ALL = [
    "0001_initial",
    "0002_code_history",
    "0003_lease",
    "0004_alerts",
    "0005_code_bundles",
    "0006_workflows",
    "0007_prune_index",
]  # in order
APPLIED = [
    (1, "0001_initial"),
    (2, "0002_code_history"),
    (3, "0003_lease"),
    (4, "0004_alerts"),
    (5, "0005_code_bundles"),
    (6, "0006_workflows"),
    (7, "0007_prune_index"),
]


_SCHEMA_MIGRATIONS = (
    "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
    "applied_at TEXT NOT NULL);"
)


# -- applying ---------------------------------------------------------------------------------


def test_migrate_applies_once_and_then_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    try:
        assert store.migrate() == ALL
        assert store.migrate() == []
    finally:
        store.close()
    reopened = SqliteStore(tmp_path / "store.db")
    try:
        assert reopened.migrate() == []
    finally:
        reopened.close()

    assert applied_rows(tmp_path / "store.db") == APPLIED
    conn = connect(tmp_path / "store.db")
    (applied_at,) = conn.execute("SELECT applied_at FROM schema_migrations").fetchone()
    conn.close()
    assert len(applied_at) == len("2026-11-29T15:15:24.123456Z") and applied_at.endswith("Z")


_MIGRATE_SCRIPT = """
import json, sys, time
from pathlib import Path
from supervisor.store.sqlite import SqliteStore
db, go = Path(sys.argv[1]), Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
store = SqliteStore(db)
try:
    print(json.dumps(store.migrate()), flush=True)
finally:
    store.close()
"""


@pytest.mark.timeout(60)
def test_processes_migrating_at_once_all_succeed_and_apply_each_migration_once(
    tmp_path: Path,
) -> None:
    db, go = tmp_path / "store.db", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE_SCRIPT, str(db), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for proc in procs:  # a real barrier: every process is up before any starts
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        go.touch()
        results = [proc.communicate(timeout=30) for proc in procs]
    finally:
        for proc in procs:
            proc.kill() if proc.poll() is None else None
            proc.wait()

    assert [proc.returncode for proc in procs] == [0] * 4, [err for _, err in results]
    applied = sorted(name for out, _ in results for name in json.loads(out))
    assert applied == ALL  # each migration by exactly one process
    assert applied_rows(db) == APPLIED


def test_database_with_a_future_version_is_refused(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    store.migrate()
    conn = connect(store.path)
    conn.execute("INSERT INTO schema_migrations VALUES (42, '0042_from_the_future', ?)", (now(),))
    conn.close()
    try:
        with pytest.raises(SchemaTooNew) as raised:
            store.migrate()
    finally:
        store.close()

    message = str(raised.value)
    assert "version 42" in message and "up to 7" in message


def test_future_version_is_refused_before_applying_anything(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    conn = connect(db)
    known = parse_migrations(
        [
            ("0001_a.sql", f"{_SCHEMA_MIGRATIONS} CREATE TABLE a (x);"),
            ("0002_b.sql", "CREATE TABLE b (x);"),
        ]
    )
    apply_sqlite(conn, known[:1], now=now)
    conn.execute("INSERT INTO schema_migrations VALUES (3, '0003_c', ?)", (now(),))

    with pytest.raises(SchemaTooNew, match=r"version 3.*up to 2"):
        apply_sqlite(conn, known, now=now)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'b'").fetchone() is None
    conn.close()


def test_migrations_apply_in_order_each_in_its_own_transaction(tmp_path: Path) -> None:
    conn = connect(tmp_path / "store.db")
    files = [
        ("0003_c.sql", "ALTER TABLE a ADD COLUMN z TEXT; CREATE TABLE broken (;"),
        ("0001_a.sql", f"{_SCHEMA_MIGRATIONS}\nCREATE TABLE a (x);"),
        ("0002_b.sql", "ALTER TABLE a ADD COLUMN y TEXT;"),
        ("README.txt", "not a migration"),
    ]
    with pytest.raises(sqlite3.OperationalError):
        apply_sqlite(conn, parse_migrations(files), now=now)

    # 0001 and 0002 are committed; 0003 failed half-way and left no trace
    columns = [row[1] for row in conn.execute("PRAGMA table_info(a)")]
    assert columns == ["x", "y"]
    assert conn.execute("SELECT version FROM schema_migrations").fetchall() == [(1,), (2,)]

    files[0] = ("0003_c.sql", "ALTER TABLE a ADD COLUMN z TEXT;")
    assert apply_sqlite(conn, parse_migrations(files), now=now) == ["0003_c"]
    assert [row[1] for row in conn.execute("PRAGMA table_info(a)")] == ["x", "y", "z"]
    conn.close()


# -- finding and reading the files ------------------------------------------------------------


def test_packaged_migrations_are_found() -> None:
    migrations = load_migrations("sqlite")
    assert [m.name for m in migrations][:1] == ["0001_initial"]
    assert sql_root().joinpath("sqlite", "0001_initial.sql").is_file()
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([("1_initial.sql", "")], "not named NNNN_name.sql"),
        ([("0001_Initial.sql", "")], "not named NNNN_name.sql"),
        ([("0001_a.sql", ""), ("0001_b.sql", "")], "used twice"),
    ],
)
def test_badly_named_or_duplicate_files_are_refused(
    files: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(StoreError, match=message):
        parse_migrations(files)


def test_missing_backend_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no migrations folder"):
        load_migrations("nosuchdb", root=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no migration files"):
        load_migrations("empty", root=tmp_path)


def test_split_statements_keeps_triggers_and_strings_whole() -> None:
    sql = """
    -- a comment; with a semicolon
    CREATE TABLE t (x TEXT DEFAULT 'a;b');
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN
        UPDATE t SET x = 'c;d'; DELETE FROM t WHERE x = 'e';
    END; CREATE INDEX i ON t (x);
    -- trailing comment
    """
    statements = split_statements(sql)
    assert len(statements) == 3
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    with pytest.raises(StoreError, match="unterminated"):
        split_statements("CREATE TABLE t (x);\nCREATE TABLE u (y)")


# -- the catalog ------------------------------------------------------------------------------

# the code columns of `actors` (issue 4), written by code-version operations only
CODE_COLUMNS = {
    "script_code", "script_code_hash", "script_file_path", "script_file_hash",
    "script_file_mtime", "script_synced_at", "script_sync_status", "active_history_id",
}  # fmt: skip

# index name -> (table, [(column or None for an expression, descending)], partial)
EXPECTED_INDEXES: dict[str, tuple[str, list[tuple[str | None, bool]], bool]] = {
    "runs_queued_at": ("runs", [("queued_at", True), ("attempt", True)], False),
    "runs_actor_queued_at": (
        "runs",
        [("actor", False), ("queued_at", True), ("attempt", True)],
        False,
    ),
    "runs_status": ("runs", [("status", False)], False),
    # retention (prune, retention_days): finished runs, oldest first
    "runs_finished_at": ("runs", [("finished_at", False)], True),
    # one first attempt per scheduled fire (issue 9)
    "runs_fire": ("runs", [("actor", False), ("scheduled_for", False)], True),
    "runs_idempotency_window": ("runs", [("queued_at", False)], True),
    "runs_idempotency_key": ("runs", [("actor", False), ("idempotency_key", False)], True),
    "execution_events_aggregate": (
        "execution_events",
        [("aggregate_type", False), ("aggregate_id", False), ("created_at", False)],
        False,
    ),
    "execution_events_conversation": ("execution_events", [(None, False)], False),
    "execution_events_correlation": ("execution_events", [("correlation_id", False)], False),
    "execution_events_created_at": ("execution_events", [("created_at", True)], False),
    "actor_code_history_active": ("actor_code_history", [("actor_id", False)], True),
    "actor_code_history_version": (
        "actor_code_history",
        [("actor_id", False), ("version_tag", False)],
        False,
    ),
    "actor_code_history_actor": (
        "actor_code_history",
        [("actor_id", False), ("activated_at", True)],
        False,
    ),
}


@pytest.fixture
def catalog(tmp_path: Path) -> sqlite3.Connection:
    store = SqliteStore(tmp_path / "store.db")
    store.migrate()
    store.close()
    return connect(tmp_path / "store.db")


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def test_catalog_tables_and_columns_match_the_records(catalog: sqlite3.Connection) -> None:
    tables = {
        row[0]
        for row in catalog.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    assert tables == {
        "schema_migrations", "actors", "runs", "task_state", "execution_events",
        "actor_code_history", "supervisor_lease", "alert_outbox", "workflow_runs",
        "workflow_items", "workflow_snapshots",
    }  # fmt: skip

    def names(record: type) -> list[str]:
        return [f.name for f in dataclasses.fields(record)]

    assert columns(catalog, "alert_outbox") == names(AlertRecord)
    assert columns(catalog, "workflow_runs") == names(WorkflowRunRecord)
    assert columns(catalog, "workflow_items") == names(WorkflowItemRecord)
    assert columns(catalog, "workflow_snapshots") == names(WorkflowSnapshot)
    views = catalog.execute("SELECT name FROM sqlite_master WHERE type = 'view'").fetchall()
    assert views == [("workflow_steps",)]

    assert columns(catalog, "runs") == names(RunRecord)
    assert columns(catalog, "task_state") == names(TaskState)
    assert columns(catalog, "execution_events") == ["id", *names(Event)]
    assert set(columns(catalog, "actors")) == {*names(ActorRecord), *CODE_COLUMNS, "created_at"}
    assert columns(catalog, "actor_code_history") == names(CodeVersion)
    assert columns(catalog, "schema_migrations") == ["version", "name", "applied_at"]

    pk = {row[1]: row[5] for row in catalog.execute("PRAGMA table_info(runs)") if row[5]}
    assert pk == {"run_id": 1, "attempt": 2}
    unique = [row for row in catalog.execute("PRAGMA index_list(execution_events)") if row[2] == 1]
    assert [columns_of(catalog, row[1]) for row in unique] == [[("event_id", False)]]
    catalog.close()


def columns_of(conn: sqlite3.Connection, index: str) -> list[tuple[str | None, bool]]:
    # index_xinfo rows: seqno, cid, name, desc, coll, key; cid -2 is an expression
    return [
        (None if row[1] == -2 else row[2], bool(row[3]))
        for row in conn.execute(f"PRAGMA index_xinfo({index})")
        if row[5]
    ]


def test_catalog_indexes_match_what_the_queries_need(catalog: sqlite3.Connection) -> None:
    found = {
        name: (table, columns_of(catalog, name), bool(partial))
        for table in ("runs", "execution_events", "task_state", "actors", "actor_code_history")
        for _, name, _, origin, partial in catalog.execute(f"PRAGMA index_list({table})")
        if origin == "c"  # created by CREATE INDEX, not by a key constraint
    }
    assert found == EXPECTED_INDEXES

    (sql,) = catalog.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'execution_events_conversation'"
    ).fetchone()
    assert "json_extract(metadata, '$.conversation_id')" in sql
    catalog.close()


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (
            "SELECT * FROM runs WHERE actor = 'a' ORDER BY queued_at DESC, attempt DESC LIMIT 50",
            "runs_actor_queued_at",
        ),
        ("SELECT * FROM runs ORDER BY queued_at DESC, attempt DESC LIMIT 50", "runs_queued_at"),
        ("SELECT * FROM runs WHERE status IN ('queued', 'running')", "runs_status"),
        (
            "SELECT run_id FROM runs WHERE finished_at < 'x' ORDER BY finished_at LIMIT 500",
            "runs_finished_at",
        ),
        (
            "SELECT actor, idempotency_key, run_id FROM runs "
            "WHERE idempotency_key IS NOT NULL AND queued_at >= 'x'",
            "runs_idempotency_window",
        ),
        (
            "SELECT run_id FROM runs WHERE actor = 'a' AND idempotency_key = 'k'",
            "runs_idempotency_key",
        ),
        (
            "SELECT * FROM execution_events WHERE aggregate_type = 'run' AND aggregate_id = 'r' "
            "ORDER BY created_at",
            "execution_events_aggregate",
        ),
        (
            "SELECT * FROM execution_events "
            "WHERE json_extract(metadata, '$.conversation_id') = 'c'",
            "execution_events_conversation",
        ),
        (
            "SELECT * FROM execution_events WHERE correlation_id = 'c'",
            "execution_events_correlation",
        ),
        (
            "SELECT * FROM execution_events ORDER BY created_at DESC LIMIT 20",
            "execution_events_created_at",
        ),
    ],
)
def test_query_shapes_use_their_index(catalog: sqlite3.Connection, query: str, index: str) -> None:
    plan = " | ".join(row[3] for row in catalog.execute(f"EXPLAIN QUERY PLAN {query}"))
    catalog.close()
    assert f"INDEX {index}" in plan, plan


def test_single_file_versions_recorded_before_bundles_stay_synced_after_0005(
    tmp_path: Path,
) -> None:
    """A database at 0004 with a version of a plain script: after 0005 it reads back as a
    bundle of that script alone, whose hash is still the file's, so the start-up sync finds
    the file in sync and records nothing new."""
    script = tmp_path / "job.py"
    script.write_text("print('{}')\n")
    (tmp_path / "s.toml").write_text('[[actors]]\nname = "job"\nscript = "job.py"\n')
    cfg = load_config(tmp_path / "s.toml", environ={}).actors["job"]
    db = tmp_path / "store.db"
    conn = connect(db)
    apply_sqlite(conn, [m for m in load_migrations("sqlite") if m.version <= 4], now=now)
    conn.close()
    old = SqliteStore(db)
    try:
        # an 0004 store writes without the column: the row is inserted by hand, as 0004 had it
        digest = hashlib.sha256(script.read_bytes()).hexdigest()
        raw = connect(db)
        raw.execute(
            "INSERT INTO actor_code_history (history_id, actor_id, script_code, script_code_hash,"
            " change_type, changed_at, version_tag, activated_at) VALUES "
            "('h1', 'job', ?, ?, 'initial', ?, '1.0.0', ?)",
            (script.read_text(), digest, now(), now()),
        )
        raw.execute(
            "INSERT INTO actors (name, script_path, code_sha256, created_at, updated_at, "
            "script_code, script_code_hash, active_history_id, script_file_hash, "
            "script_sync_status) VALUES ('job', ?, ?, ?, ?, ?, ?, 'h1', ?, 'synced')",
            (str(script), digest, now(), now(), script.read_text(), digest, digest),
        )
        raw.close()
        assert old.migrate()[0] == "0005_code_bundles"  # and any later ones
        (version,) = old.code_history("job")
        assert (version.bundle_files, version.script_code_hash) == (None, digest)
        code, records = sync_actor(cfg, old.load_code_states(["job"])["job"], tmp_path, time.time())
        assert (code.history_id, code.status) == ("h1", "synced")
        assert not [r for r in records if isinstance(r, CodeChange)]  # no new version
    finally:
        old.close()
