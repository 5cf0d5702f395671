"""PostgreSQL migrations: once, in order, atomically, from several processes at once (advisory
lock), refused when the database is ahead; and the catalog they build -- native types, the
event-store indexes -- checked against what the code expects."""

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from supervisor.alerts.records import AlertRecord
from supervisor.code.records import CodeVersion
from supervisor.records import ActorRecord, Event, RunRecord, TaskState
from supervisor.store.base import SchemaTooNew
from supervisor.store.migrations import apply_postgres, load_migrations, parse_migrations
from supervisor.store.postgres import PostgresStore
from supervisor.workflows.records import WorkflowItemRecord, WorkflowRunRecord, WorkflowSnapshot
from tests import pg


def connect(database: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(pg.database_url(database))


def applied_rows(database: str) -> list[tuple[object, ...]]:
    with connect(database) as conn:
        return conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1").fetchall()


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


def test_migrate_applies_once_and_then_nothing(pg_empty_database: str) -> None:
    url = pg.database_url(pg_empty_database)
    store = PostgresStore(url)
    try:
        assert store.migrate() == ALL
        assert store.migrate() == []
    finally:
        store.close()
    reopened = PostgresStore(url)
    try:
        assert reopened.migrate() == []
    finally:
        reopened.close()
    assert applied_rows(pg_empty_database) == APPLIED


_MIGRATE_SCRIPT = """
import json, sys, time
from pathlib import Path
from supervisor.store.postgres import PostgresStore
url, go = sys.argv[1], Path(sys.argv[2])
store = PostgresStore(url)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
try:
    print(json.dumps(store.migrate()), flush=True)
finally:
    store.close()
"""


@pytest.mark.timeout(60)
def test_processes_migrating_at_once_all_succeed_and_apply_each_migration_once(
    pg_empty_database: str, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    url = pg.database_url(pg_empty_database)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE_SCRIPT, url, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for proc in procs:  # every process is connected before any starts
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
    assert applied_rows(pg_empty_database) == APPLIED


def test_database_with_a_future_version_is_refused(pg_database: str) -> None:
    with connect(pg_database) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (42, '0042_from_the_future', now())")
    store = PostgresStore(pg.database_url(pg_database))
    try:
        with pytest.raises(SchemaTooNew) as raised:
            store.migrate()
    finally:
        store.close()
    assert "version 42" in str(raised.value) and "up to 7" in str(raised.value)


_SCHEMA_MIGRATIONS = (
    "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
    "applied_at timestamptz NOT NULL);"
)


@pytest.fixture
def raw(pg_empty_database: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with connect(pg_empty_database) as conn:
        yield conn


def test_future_version_is_refused_before_applying_anything(
    raw: psycopg.Connection[tuple[object, ...]],
) -> None:
    known = parse_migrations(
        [
            ("0001_a.sql", f"{_SCHEMA_MIGRATIONS} CREATE TABLE a (x int);"),
            ("0002_b.sql", "CREATE TABLE b (x int);"),
        ]
    )
    apply_postgres(raw, known[:1])
    raw.execute("INSERT INTO schema_migrations VALUES (3, '0003_c', now())")
    raw.commit()

    with pytest.raises(SchemaTooNew, match=r"version 3.*up to 2"):
        apply_postgres(raw, known)
    assert raw.execute("SELECT to_regclass('b')").fetchone() == (None,)


def test_migrations_apply_in_order_each_in_its_own_transaction(
    raw: psycopg.Connection[tuple[object, ...]],
) -> None:
    files = [
        ("0003_c.sql", "ALTER TABLE a ADD COLUMN z text; CREATE TABLE broken (;"),
        ("0001_a.sql", f"{_SCHEMA_MIGRATIONS}\nCREATE TABLE a (x int);"),
        ("0002_b.sql", "ALTER TABLE a ADD COLUMN y text;"),
    ]
    with pytest.raises(psycopg.errors.SyntaxError):
        apply_postgres(raw, parse_migrations(files))

    def columns() -> list[object]:
        return [
            r[0]
            for r in raw.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'a' ORDER BY ordinal_position"
            )
        ]

    assert columns() == ["x", "y"]  # 0001 and 0002 committed; 0003 left no trace
    assert raw.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall() == [
        (1,),
        (2,),
    ]
    raw.rollback()
    files[0] = ("0003_c.sql", "ALTER TABLE a ADD COLUMN z text;")
    assert apply_postgres(raw, parse_migrations(files)) == ["0003_c"]
    assert columns() == ["x", "y", "z"]


def test_postgres_and_sqlite_migrations_come_in_step() -> None:
    postgres = [m.name for m in load_migrations("postgres")]
    assert postgres == [m.name for m in load_migrations("sqlite")]
    assert postgres[:1] == ["0001_initial"]


# -- the catalog -------------------------------------------------------------------------------


@pytest.fixture
def catalog(pg_database: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with connect(pg_database) as conn:
        yield conn


def column_types(conn: psycopg.Connection[tuple[object, ...]], table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    return {str(name): str(kind) for name, kind in rows}


def names(record: type) -> list[str]:
    return [f.name for f in dataclasses.fields(record)]


def test_catalog_tables_and_columns_match_the_records_with_native_types(
    catalog: psycopg.Connection[tuple[object, ...]],
) -> None:
    tables = {
        r[0]
        for r in catalog.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    }
    assert tables == {
        "schema_migrations", "actors", "runs", "task_state", "execution_events",
        "actor_code_history", "supervisor_lease", "alert_outbox", "workflow_runs",
        "workflow_items", "workflow_snapshots", "workflow_steps",
    }  # fmt: skip
    assert list(column_types(catalog, "alert_outbox")) == names(AlertRecord)
    assert list(column_types(catalog, "workflow_runs")) == names(WorkflowRunRecord)
    assert list(column_types(catalog, "workflow_items")) == names(WorkflowItemRecord)
    assert list(column_types(catalog, "workflow_snapshots")) == names(WorkflowSnapshot)

    runs = column_types(catalog, "runs")
    assert list(runs) == names(RunRecord)
    assert list(column_types(catalog, "task_state")) == names(TaskState)
    events = column_types(catalog, "execution_events")
    assert list(events) == ["id", *names(Event)]
    actors = column_types(catalog, "actors")
    assert set(actors) == {*names(ActorRecord), *CODE_COLUMNS, "created_at"}
    history = column_types(catalog, "actor_code_history")
    assert list(history) == names(CodeVersion)
    assert {history[c] for c in ("changed_at", "activated_at", "deactivated_at")} == {
        "timestamp with time zone"
    }
    assert (actors["script_file_mtime"], actors["script_synced_at"]) == (
        "timestamp with time zone",
    ) * 2

    timestamp = "timestamp with time zone"
    assert {runs[c] for c in ("queued_at", "scheduled_for", "started_at", "finished_at")} == {
        timestamp
    }
    assert (runs["input_json"], runs["output_json"]) == ("json", "json")  # the exact text
    assert (runs["attempt"], runs["exit_code"], runs["maxrss_kb"]) == ("bigint",) * 3
    assert (events["metadata"], events["created_at"]) == ("jsonb", timestamp)
    assert events["id"] == "bigint"
    assert column_types(catalog, "task_state")["is_paused"] == "boolean"
    assert column_types(catalog, "task_state")["metadata"] == "jsonb"
    assert column_types(catalog, "actors")["config"] == "jsonb"
    identity = catalog.execute(
        "SELECT is_identity FROM information_schema.columns "
        "WHERE table_name = 'execution_events' AND column_name = 'id'"
    ).fetchone()
    assert identity == ("YES",)


CODE_COLUMNS = {
    "script_code", "script_code_hash", "script_file_path", "script_file_hash",
    "script_file_mtime", "script_synced_at", "script_sync_status", "active_history_id",
}  # fmt: skip

EXPECTED_INDEXES = {
    "runs_pkey": "UNIQUE INDEX runs_pkey ON public.runs USING btree (run_id, attempt)",
    "runs_queued_at": (
        "INDEX runs_queued_at ON public.runs USING btree (queued_at DESC, attempt DESC)"
    ),
    "runs_actor_queued_at": (
        "INDEX runs_actor_queued_at ON public.runs "
        "USING btree (actor, queued_at DESC, attempt DESC)"
    ),
    "runs_status": "INDEX runs_status ON public.runs USING btree (status)",
    "runs_finished_at": (
        "INDEX runs_finished_at ON public.runs USING btree (finished_at) "
        "WHERE (finished_at IS NOT NULL)"
    ),
    # one first attempt per scheduled fire (issue 9); pre-lease rows (epoch 0) left out
    "runs_fire": (
        "UNIQUE INDEX runs_fire ON public.runs USING btree (actor, scheduled_for) "
        "WHERE ((attempt = 1) AND (scheduled_for IS NOT NULL) AND (epoch > 0))"
    ),
    "runs_idempotency_window": (
        "INDEX runs_idempotency_window ON public.runs USING btree (queued_at) "
        "WHERE (idempotency_key IS NOT NULL)"
    ),
    "runs_idempotency_key": (
        "INDEX runs_idempotency_key ON public.runs USING btree (actor, idempotency_key) "
        "WHERE (idempotency_key IS NOT NULL)"
    ),
    "execution_events_pkey": (
        "UNIQUE INDEX execution_events_pkey ON public.execution_events USING btree (event_id)"
    ),
    "execution_events_aggregate": (
        "INDEX execution_events_aggregate ON public.execution_events "
        "USING btree (aggregate_type, aggregate_id, created_at, id)"
    ),
    "execution_events_conversation": (
        "INDEX execution_events_conversation ON public.execution_events "
        "USING btree (((metadata ->> 'conversation_id'::text))) "
        "WHERE ((metadata ->> 'conversation_id'::text) IS NOT NULL)"
    ),
    "execution_events_correlation": (
        "INDEX execution_events_correlation ON public.execution_events USING btree (correlation_id)"
    ),
    "execution_events_created_at": (
        "INDEX execution_events_created_at ON public.execution_events USING btree (created_at DESC)"
    ),
    "actor_code_history_pkey": (
        "UNIQUE INDEX actor_code_history_pkey ON public.actor_code_history USING btree (history_id)"
    ),
    "actor_code_history_active": (
        "UNIQUE INDEX actor_code_history_active ON public.actor_code_history "
        "USING btree (actor_id) WHERE (deactivated_at IS NULL)"
    ),
    "actor_code_history_version": (
        "UNIQUE INDEX actor_code_history_version ON public.actor_code_history "
        "USING btree (actor_id, version_tag)"
    ),
    "actor_code_history_actor": (
        "INDEX actor_code_history_actor ON public.actor_code_history "
        "USING btree (actor_id, activated_at DESC)"
    ),
}


def test_catalog_indexes_match_what_the_queries_need(
    catalog: psycopg.Connection[tuple[object, ...]],
) -> None:
    found = {
        str(name): str(definition).replace("CREATE ", "", 1)
        for name, definition in catalog.execute(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE tablename IN ('runs', 'execution_events', 'actor_code_history')"
        )
    }
    assert found == EXPECTED_INDEXES


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (
            "SELECT * FROM execution_events WHERE aggregate_type = 'run' AND aggregate_id = 'r' "
            "ORDER BY created_at, id LIMIT 1000",
            "execution_events_aggregate",
        ),
        (
            "SELECT * FROM execution_events WHERE metadata ->> 'conversation_id' = 'c'",
            "execution_events_conversation",
        ),
        (
            "SELECT * FROM execution_events ORDER BY created_at DESC LIMIT 20",
            "execution_events_created_at",
        ),
        ("SELECT * FROM execution_events WHERE event_id = 'e'", "execution_events_pkey"),
        (
            "SELECT * FROM runs WHERE actor = 'a' ORDER BY queued_at DESC, attempt DESC LIMIT 50",
            "runs_actor_queued_at",
        ),
        ("SELECT * FROM runs WHERE status IN ('queued', 'running')", "runs_status"),
    ],
)
def test_query_shapes_use_their_index_without_sorting(
    catalog: psycopg.Connection[tuple[object, ...]], query: str, index: str
) -> None:
    catalog.execute("SET enable_seqscan = off")  # an empty table: make the planner show its hand
    plan = "\n".join(str(row[0]) for row in catalog.execute(f"EXPLAIN {query}"))
    assert index in plan, plan
    assert "Sort" not in plan, plan


def test_retention_walks_runs_by_finished_at_without_sorting(
    catalog: psycopg.Connection[tuple[object, ...]],
) -> None:
    """On an empty table the planner prefers a bitmap scan and a sort for a range; with rows,
    an ordered index scan (shown here with bitmaps off) reads the oldest first and stops."""
    catalog.execute("SET enable_seqscan = off")
    catalog.execute("SET enable_bitmapscan = off")
    query = "SELECT run_id FROM runs WHERE finished_at < now() ORDER BY finished_at LIMIT 500"
    plan = "\n".join(str(row[0]) for row in catalog.execute(f"EXPLAIN {query}"))
    assert "runs_finished_at" in plan and "Sort" not in plan, plan
