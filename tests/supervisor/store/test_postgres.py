"""PostgreSQL-specific behaviour: URLs and passwords, waiting for the server at start-up,
broken connections, outages through a proxy we cut, batching without per-event round trips,
and the CLI's store commands."""

import dataclasses
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest

from supervisor.records import Event, Record, RunRecord
from supervisor.store import PoolOptions, open_store
from supervisor.store.base import StoreError, StoreUnavailable
from supervisor.store.postgres import PostgresStore
from tests import pg
from tests.helpers import T0, event
from tests.helpers import run_record as run
from tests.proxy import Proxy

SECRET = "s3cret-Pa55"


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    pg.require_server()
    proxy = Proxy(("127.0.0.1", pg.server_port()))
    yield proxy
    proxy.close()


def closed_port() -> int:
    """A local port nobody listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- URLs, passwords, opening --------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_open_store_opens_postgres_and_hides_the_password(pg_database: str, scheme: str) -> None:
    url = pg.database_url(pg_database, password=SECRET).replace("postgresql", scheme, 1)
    store = open_store(url, base_dir=Path("/nonexistent"))
    try:
        assert isinstance(store, PostgresStore)
        assert SECRET not in store.description and ":***@" in store.description
        store.write_batch([event(1)])
        assert [e.event_id for e in store.list_events()] == ["e1"]
    finally:
        store.close()


@pytest.mark.timeout(30)
def test_unreachable_server_fails_at_once_by_default_with_the_reason_and_no_password() -> None:
    pg.require_server()
    url = f"postgresql://app:{SECRET}@127.0.0.1:{closed_port()}/db"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        open_store(url, base_dir=Path("."))
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert "Connection refused" in message and "app:***@127.0.0.1" in message
    assert SECRET not in message


@pytest.mark.timeout(30)
def test_start_up_waits_for_the_server_with_a_log_line_per_attempt(
    pg_database: str, proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy.cut()
    threading.Timer(1.5, proxy.restore).start()
    url = pg.database_url(pg_database, port=proxy.port, password=SECRET)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="supervisor.store.pgpool"):
        store = PostgresStore(url, options=PoolOptions(wait_s=20, connect_timeout_s=2))
    try:
        assert 1.4 < time.monotonic() - started < 15
        store.write_batch([event(1)])
    finally:
        store.close()
    waiting = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert waiting, caplog.text
    assert all("Connection refused" in m and "giving up in" in m for m in waiting)
    assert SECRET not in caplog.text


@pytest.mark.timeout(30)
def test_start_up_gives_up_after_the_configured_wait_with_a_clear_error() -> None:
    pg.require_server()
    url = f"postgresql://app:{SECRET}@127.0.0.1:{closed_port()}/db"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"gave up after waiting 1\.5 s") as raised:
        PostgresStore(url, options=PoolOptions(wait_s=1.5, connect_timeout_s=1))
    assert 1.4 < time.monotonic() - started < 8
    assert SECRET not in str(raised.value)


def test_a_malformed_url_is_a_store_error_not_a_wait() -> None:
    with pytest.raises(StoreError, match="invalid URI query parameter") as raised:
        PostgresStore("postgresql://u@127.0.0.1/db?nonsense=1", options=PoolOptions(wait_s=30))
    assert not isinstance(raised.value, StoreUnavailable)


# -- broken connections and outages ------------------------------------------------------------


def terminate_backends(database: str) -> int:
    """Kill every server process of ``database`` and wait until they are gone.

    pg_terminate_backend only signals: a pool check racing a backend still on its way out
    would pass and the next statement would then fail.
    """
    query = "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
    with pg.admin() as conn:
        rows = conn.execute(f"SELECT pg_terminate_backend(pid) {query}", (database,)).fetchall()
        deadline = time.monotonic() + 30
        while conn.execute(f"SELECT count(*) {query}", (database,)).fetchone()[0]:
            assert time.monotonic() < deadline, "backends did not exit within 30 s"
            time.sleep(0.01)
    return len(rows)


def test_a_broken_connection_is_checked_and_replaced_before_use(pg_database: str) -> None:
    store = PostgresStore(pg.database_url(pg_database), options=PoolOptions(check=True))
    try:
        store.write_batch([event(1)])
        assert terminate_backends(pg_database) >= 1
        store.write_batch([event(2)])  # the check discards the dead connection: no error at all
        assert [e.event_id for e in store.list_events()] == ["e1", "e2"]
        # the replacement is opened in the pool's background: in use until it is ready
        deadline = time.monotonic() + 10
        while store.connections_in_use() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.connections_in_use() == 0
    finally:
        store.close()


def test_without_the_check_a_broken_connection_fails_once_and_is_replaced(
    pg_database: str,
) -> None:
    store = PostgresStore(pg.database_url(pg_database), options=PoolOptions(check=False))
    try:
        store.write_batch([event(1)])
        terminate_backends(pg_database)
        with pytest.raises(StoreUnavailable):
            store.write_batch([event(2)])  # retryable: the writer would spool it
        store.write_batch([event(2)])
        assert [e.event_id for e in store.list_events()] == ["e1", "e2"]
    finally:
        store.close()


@pytest.mark.timeout(60)
def test_an_outage_raises_store_unavailable_quickly_and_the_store_recovers(
    pg_database: str, proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    url = pg.database_url(pg_database, port=proxy.port, password=SECRET)
    options = PoolOptions(acquire_timeout_s=1, connect_timeout_s=1)
    store = PostgresStore(url, options=options)
    try:
        store.write_batch([event(1)])
        proxy.cut()
        with pytest.raises(StoreUnavailable):
            store.write_batch([event(2)])
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="Connection refused"):
            store.write_batch([event(2)])  # probed first: refused at once, no acquire wait
        assert time.monotonic() - started < 0.9
        proxy.restore()
        with caplog.at_level(logging.INFO, logger="supervisor.store.postgres"):
            store.write_batch([event(2)])
        assert "reconnected" in caplog.text
        assert [e.event_id for e in store.list_events()] == ["e1", "e2"]
    finally:
        store.close()
    assert SECRET not in caplog.text


def test_a_failed_commit_leaves_nothing_behind(pg_database: str) -> None:
    store = PostgresStore(pg.database_url(pg_database))
    try:
        bad = RunRecord(
            run_id="bad", attempt=1, actor="a", correlation_id="x", trigger="t", queued_at=T0,
            input_json="not json",  # json column: the server refuses it mid-transaction
        )  # fmt: skip
        with pytest.raises(StoreError) as raised:
            store.write_batch([event(1), run("ok"), bad])
        assert not isinstance(raised.value, StoreUnavailable)
        assert store.list_events() == [] and store.list_runs() == []
        store.write_batch([event(1)])  # the connection is usable again
    finally:
        store.close()


# -- batching -------------------------------------------------------------------------------------


def test_a_big_batch_is_a_handful_of_round_trips_not_one_per_row(
    pg_database: str, proxy: Proxy
) -> None:
    store = PostgresStore(pg.database_url(pg_database, port=proxy.port))
    try:
        store.write_batch([event(0)])  # warm up: connection set up, statements prepared
        before = proxy.round_trips
        batch: list[Record] = [event(n, aggregate_id=f"r{n % 50}") for n in range(1, 2001)]
        batch += [run(f"r{n}") for n in range(200)]
        store.write_batch(batch)
        trips = proxy.round_trips - before
        # check, BEGIN, the runs (one pipeline), COPY start, COPY data, move, COMMIT: about 8;
        # the server may split an answer, so allow some slack -- far below one per record
        assert trips <= 20, f"{trips} round trips for one batch of 2200 records"
        assert len(store.list_events(limit=10_000)) == 2001
        assert len(store.list_runs(limit=1000)) == 200
    finally:
        store.close()


def test_a_big_replayed_batch_falls_back_to_skipping_duplicates_in_order(
    pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresStore(pg.database_url(pg_database))
    try:
        first = [event(n) for n in range(100)]  # above the pipeline size: COPY
        store.write_batch(first)
        changed = [dataclasses.replace(e, metadata={"replayed": True}) for e in first[:50]]
        repeated = [*changed, *(event(n) for n in range(100, 150)), event(120)]
        with caplog.at_level(logging.INFO, logger="supervisor.store.postgres"):
            store.write_batch(repeated)  # stored ids, new ones, and a duplicate within
        stored = store.list_events(limit=1000)
        assert [e.event_id for e in stored] == [f"e{n}" for n in range(150)]
        assert all(e.metadata == {"n": n} for n, e in enumerate(stored))  # first write wins
        assert "repeats stored events" in caplog.text
        assert store.connections_in_use() == 0
    finally:
        store.close()


def test_events_keep_batch_order_for_equal_times(pg_database: str) -> None:
    store = PostgresStore(pg.database_url(pg_database))
    try:
        same_time = [
            Event(
                event_id=f"x{n:03d}", event_type="t", aggregate_type="run",
                aggregate_id="r", created_at=T0,
            )
            for n in reversed(range(300))
        ]  # fmt: skip
        store.write_batch(same_time)
        assert [e.event_id for e in store.list_events()] == [e.event_id for e in same_time]
    finally:
        store.close()


# -- the CLI's store commands on PostgreSQL -------------------------------------------------------


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
    )


@pytest.mark.timeout(90)
def test_cli_migrate_history_and_events_read_postgres(
    pg_empty_database: str, tmp_path: Path
) -> None:
    url = pg.database_url(pg_empty_database, password=SECRET)
    first = cli("migrate", "--database", url, "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    applied = [
        "0001_initial",
        "0002_code_history",
        "0003_lease",
        "0004_alerts",
        "0005_code_bundles",
        "0006_workflows",
        "0007_prune_index",
    ]
    assert orjson.loads(first.stdout)["applied"] == applied
    assert SECRET not in first.stdout + first.stderr
    again = cli("migrate", "--database", url, "--json", cwd=tmp_path)
    assert orjson.loads(again.stdout)["applied"] == []

    store = PostgresStore(url)
    try:
        store.write_batch(
            [
                run("r1"),
                *(event(n, created_at=T0 + n / 1000) for n in (1, 2)),
                event(3, aggregate_id="r2", correlation_id="r2", created_at=T0 + 0.003),
            ]
        )
    finally:
        store.close()
    history = cli("history", "--database", url, "--json", cwd=tmp_path)
    assert history.returncode == 0, history.stderr
    assert [r["run_id"] for r in orjson.loads(history.stdout)] == ["r1"]
    events = cli("events", "--run", "r1", "--database", url, "--json", cwd=tmp_path)
    assert events.returncode == 0, events.stderr
    assert [e["event_id"] for e in orjson.loads(events.stdout)] == ["e2", "e1"]  # newest first
    since = cli("events", "--since", str(T0 + 0.0015), "--database", url, "--json",
                "--oldest-first", cwd=tmp_path)  # fmt: skip
    assert [e["event_id"] for e in orjson.loads(since.stdout)] == ["e2", "e3"]
    correlated = cli("events", "--correlation", "r2", "--database", url, cwd=tmp_path)
    assert correlated.returncode == 0 and "run_queued" in correlated.stdout


@pytest.mark.timeout(60)
def test_cli_reports_an_unreachable_database_without_the_password(tmp_path: Path) -> None:
    pg.require_server()
    url = f"postgresql://app:{SECRET}@127.0.0.1:{closed_port()}/db"
    # the CLI waits up to 10 s for a server by default; nothing will listen on this port
    wait = {"ACTOR_SUPERVISOR_DATABASE_WAIT_S": "0.3"}
    result = cli("history", "--database", url, cwd=tmp_path, env=wait)
    assert result.returncode == 4
    assert "Connection refused" in result.stderr and SECRET not in result.stderr


def test_server_side_check_of_the_pool_kwargs(pg_database: str) -> None:
    store = PostgresStore(pg.database_url(pg_database))
    try:
        store.write_batch([event(1)])
        with pg.admin() as conn:
            names = conn.execute(
                "SELECT application_name FROM pg_stat_activity WHERE datname = %s",
                (pg_database,),
            ).fetchall()
        assert ("actor-supervisor",) in names
    finally:
        store.close()


def test_psycopg_is_only_imported_for_postgres() -> None:
    code = "import sys, supervisor.cli, supervisor.store; print('psycopg' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert psycopg.__version__  # the test module itself may import it
