"""The PostgreSQL store: a ``psycopg_pool.ConnectionPool`` held by the supervisor.

A batch is one pooled connection and one transaction, whatever its size, and never a round
trip per record. A small batch -- what an unhurried supervisor flushes: a run's row and an
event or two -- goes in one pipeline: BEGIN, the upserts, ``INSERT ... ON CONFLICT (event_id)
DO NOTHING`` per event and COMMIT, in a single round trip. In a big batch the events (the
volume) are streamed with binary ``COPY`` straight into ``execution_events``: each row is
converted as it is sent, so the server inserts one chunk while Python converts the next.
``COPY`` cannot skip a duplicate, so if an ``event_id`` is already stored (a replayed batch)
the transaction is rolled back and the batch is written again through a per-connection staging
table and ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``, in batch order. Replays are rare;
the common case pays for no staging. Upserts of runs, task states and actors always go with
``executemany``, which psycopg pipelines. Reads return exactly what
SQLite returns: epoch floats from ``timestamptz``, the exact JSON text of a script's input and
output (``json`` columns are loaded as text), Python values from ``jsonb``, and byte-order
("C") sorting of text ties.

After a failure that may have cost the pool its connections, the next operation first probes
the server and, once it answers, replaces the pool: psycopg_pool's own reconnect loop backs
off exponentially, which after a long outage would delay recovery by as long again.
"""

import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb, set_json_dumps, set_json_loads
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool

from supervisor.records import Event, Record
from supervisor.store import code, outbox, workflows
from supervisor.store.base import RefusedFires, StoreError, StoreUnavailable
from supervisor.store.migrations import apply_postgres, load_migrations
from supervisor.store.options import PoolOptions
from supervisor.store.pgcopy import EVENT_COLUMNS, events_stream
from supervisor.store.pgpool import Secret, open_pool, translate
from supervisor.store.sql import (
    BatchRows,
    Codec,
    SqlStore,
    apply_code,
    claim_fires,
    encoding,
    make_tables,
    names,
    same,
)
from supervisor.store.urls import redact_url
from supervisor.store.values import event_texts, json_bytes, json_text, opt_json_text

log = logging.getLogger(__name__)

_Pool = ConnectionPool[psycopg.Connection[Any]]

# ---------------------------------------------------------------------------------------------
# Values: epoch floats <-> timestamptz with the same microsecond rounding as the SQLite text.

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def to_datetime(ts: float) -> datetime:
    return _EPOCH + timedelta(microseconds=round(ts * 1_000_000))


def from_datetime(moment: datetime) -> float:
    return (moment - _EPOCH) / _SECOND


def _opt_to_datetime(ts: float | None) -> datetime | None:
    return None if ts is None else to_datetime(ts)


def _opt_from_datetime(moment: datetime | None) -> float | None:
    return None if moment is None else from_datetime(moment)


def _loads(data: str | bytes) -> Any:
    """orjson, with the stdlib for what it refuses: jsonb prints a float such as 1e20 as a
    21-digit integer, beyond orjson's 64-bit limit."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


_TIMESTAMP: Codec = (_opt_to_datetime, _opt_from_datetime)
_JSONB: Codec = (json_text, same)  # psycopg loads jsonb with _loads
_OPT_JSONB: Codec = (opt_json_text, same)

_TABLES = make_tables(
    placeholder="%s",
    timestamp=_TIMESTAMP,
    to_timestamp=to_datetime,
    json=_JSONB,
    opt_json=_OPT_JSONB,
)
_RUNS, _EVENTS = _TABLES.runs, _TABLES.events

# Events: binary COPY into the table; on a duplicate event_id, the same rows (with their batch
# position) through the staging table and ON CONFLICT. Identity ids (the tie-break of equal
# times) follow the batch order either way.
_COPY_EVENTS = f"COPY execution_events ({names(EVENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_EVENT_ID_KEY = "execution_events_pkey"
_STAGE = "actor_supervisor_events_in"
_STAGE_DDL = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} (ord integer NOT NULL, "
    "event_id text, event_type text, aggregate_type text, aggregate_id text, "
    "correlation_id text, metadata jsonb, created_at timestamptz) ON COMMIT DELETE ROWS"
)
_COPY_STAGE = f"COPY {_STAGE} ({names(['ord', *EVENT_COLUMNS])}) FROM STDIN (FORMAT BINARY)"
_MOVE_STAGE = (
    f"INSERT INTO execution_events ({names(EVENT_COLUMNS)}) "
    f"SELECT {names(EVENT_COLUMNS)} FROM {_STAGE} ORDER BY ord "
    "ON CONFLICT (event_id) DO NOTHING"
)


_PIPELINE_MAX_EVENTS = 16  # measured: below ~10-20 events a pipeline beats COPY's round trips
_INSERT_EVENT = _EVENTS.insert  # ON CONFLICT (event_id) DO NOTHING


def _event_row(event: Event) -> tuple[Any, ...]:
    """One event as statement values; its metadata is dumped by the connection's jsonb dumper."""
    return (*event_texts(event), event.metadata, to_datetime(event.created_at))


def _event_params(event: Event) -> tuple[Any, ...]:
    """:func:`_event_row` as statement parameters: the metadata wrapped to be sent as jsonb."""
    row = _event_row(event)
    return (*row[:5], Jsonb(row[5]), row[6])


class _DuplicateEvent(Exception):
    """COPY met an ``event_id`` already stored: write the batch again, skipping duplicates."""


class _JsonTextLoader(TextLoader):
    """``json`` columns (a script's input and output) come back as the exact text stored."""


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Every new pooled connection: our JSON adapters and UTC."""
    set_json_loads(_loads, conn)
    set_json_dumps(json_bytes, conn)  # orjson, NULs replaced as on SQLite
    conn.adapters.register_loader("json", _JsonTextLoader)
    conn.execute("SET TIME ZONE 'UTC'")
    conn.commit()


def _configure_read_only(conn: psycopg.Connection[Any]) -> None:
    _configure(conn)
    conn.execute("SET default_transaction_read_only = on")
    conn.commit()


# pg_advisory_xact_lock(CODE_LOCK_CLASS, hashtext(actor)): code changes of one actor, from any
# process on any host, take turns ("actr" in ASCII). A hash collision only serializes more.
CODE_LOCK_CLASS = 0x61637472


def _psycopg_sql(sql: str) -> str:
    """SQL shared with SQLite (``?`` placeholders, no ``%`` and no jsonb ``?`` operator) for
    psycopg, which takes ``%s``."""
    return sql.replace("?", "%s")


class _CodeDb(code.CodeDb):
    """The code-history logic on one pooled connection, inside its transaction."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(_psycopg_sql(sql), params).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._conn.execute(_psycopg_sql(sql), params)

    def to_db(self, ts: float | None) -> Any:
        return _opt_to_datetime(ts)

    def from_db(self, value: Any) -> float | None:
        return _opt_from_datetime(value)

    def lock_actor(self, actor: str) -> None:
        self._conn.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (CODE_LOCK_CLASS, actor)
        )

    def add_events(self, found: Sequence[Event]) -> None:
        with self._conn.cursor() as cur, encoding():
            cur.executemany(_INSERT_EVENT, map(_event_params, found))


class PostgresStore(SqlStore[psycopg.Connection[Any]]):
    """A :class:`Store` in a PostgreSQL database, through a connection pool.

    Opening waits for the server up to ``options.wait_s`` (see :func:`open_pool`).
    """

    _tables = _TABLES

    def __init__(
        self, url: str, *, options: PoolOptions | None = None, read_only: bool = False
    ) -> None:
        """``read_only``: every transaction is read-only (``default_transaction_read_only``)."""
        self._url = url
        self._options = options or PoolOptions()
        self._secret = Secret(url)
        self.description = redact_url(url)
        self.refused = RefusedFires()
        self._pid = os.getpid()
        self._lock = threading.Lock()  # guards the pool reference, not its use
        self._suspect = False  # a failure may have cost the pool its connections
        self._closed = False
        self._configure = _configure_read_only if read_only else _configure
        self._pool: _Pool | None = open_pool(
            url,
            self._options,
            description=self.description,
            secret=self._secret,
            configure=self._configure,
        )

    # -- connections ---------------------------------------------------------------------------

    def _pool_for(self) -> _Pool:
        """The pool to use now; after a failure, probe first and replace the pool if it is back.

        The probe fails fast (connection refused) where waiting on the old pool would take the
        whole acquire timeout, which matters to the writer retrying during an outage.
        """
        with self._lock:
            if self._closed or self._pool is None:
                raise StoreError(f"{self.description}: the store is closed")
            if os.getpid() != self._pid:
                # pooled connections must never cross fork(); the child opens its own store
                raise StoreError(
                    f"{self.description}: opened in process {self._pid}, used in {os.getpid()}"
                )
            if not self._suspect:
                return self._pool
            old = self._pool
        fresh = open_pool(  # probes first: refused at once while the server is down
            self._url,
            self._options,
            description=self.description,
            secret=self._secret,
            configure=self._configure,
            wait_s=0,  # one attempt: the caller (the writer) has its own backoff
        )
        with self._lock:
            if self._closed:
                fresh.close()
                raise StoreError(f"{self.description}: the store is closed")
            self._pool, self._suspect = fresh, False
        # the old pool's workers may be inside a connection attempt: let them finish elsewhere
        threading.Thread(target=old.close, name="store-pool-close", daemon=True).start()
        log.info("%s: reconnected", self.description, extra={"event": "store_reconnected"})
        return fresh

    @contextmanager
    def _connection(self, action: str) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection inside one transaction: committed on success, else rolled back."""
        try:
            with translate(self.description, action, self._secret):
                pool = self._pool_for()
                with pool.connection(timeout=self._options.acquire_timeout_s) as conn:
                    yield conn
        except StoreUnavailable:
            with self._lock:
                self._suspect = True
            raise

    # -- Store ---------------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        migrations = load_migrations("postgres")
        with self._connection("migrate") as conn:
            applied = apply_postgres(conn, migrations)
        self._log_applied(applied)
        return applied

    def write_batch(self, records: Sequence[Record]) -> None:
        rows = BatchRows(records, _TABLES, convert_events=False)
        if not rows:
            return
        try:
            self._write(rows, replay=False)
        except _DuplicateEvent:
            log.info(
                "%s: a batch repeats stored events; writing it again, skipping them",
                self.description,
                extra={"event": "store_duplicate_events"},
            )
            self._write(rows, replay=True)

    def _write(self, rows: BatchRows, *, replay: bool) -> None:
        refused: list[str] = []
        self._write_rows(rows, replay=replay, refused=refused)
        self.refused.add(refused)  # only once the transaction committed

    def _write_rows(self, rows: BatchRows, *, replay: bool, refused: list[str]) -> None:
        with self._connection("write a batch") as conn, conn.cursor() as cur:
            if rows.code:  # rare, and each change reads before it writes: no pipeline for these
                apply_code(_CodeDb(conn), rows.code)
            refused.extend(claim_fires(cur.execute, _RUNS, rows.fires))  # never through COPY
            if rows.alerts:  # rare as well, and in order: a folded repeat updates its row
                outbox.write(_CodeDb(conn), rows.alerts)
            if rows.workflows:
                workflows.write(_CodeDb(conn), rows.workflows)
            if len(rows.events) <= _PIPELINE_MAX_EVENTS:
                with conn.pipeline():
                    rows.upsert(cur.executemany, _TABLES)
                    if rows.events:
                        with encoding():  # the metadata is dumped as the statement is sent
                            cur.executemany(_INSERT_EVENT, map(_event_params, rows.events))
                    conn.commit()  # in the pipeline too: the whole batch is one round trip
                return
            rows.upsert(cur.executemany, _TABLES)
            if replay:
                cur.execute(_STAGE_DDL)  # once per connection; only replays need it
                with encoding(), cur.copy(_COPY_STAGE) as copy:
                    for chunk in events_stream(rows.events, numbered=True):
                        copy.write(chunk)
                cur.execute(_MOVE_STAGE)
            else:
                try:
                    with encoding(), cur.copy(_COPY_EVENTS) as copy:
                        for chunk in events_stream(rows.events):
                            copy.write(chunk)
                except psycopg.errors.UniqueViolation as exc:
                    if exc.diag.constraint_name != _EVENT_ID_KEY:
                        raise
                    raise _DuplicateEvent from exc  # the transaction rolls back on the way out

    def connections_in_use(self) -> int:
        with self._lock:
            pool = self._pool
        if pool is None:
            return 0
        stats = pool.get_stats()
        return int(stats.get("pool_size", 0)) - int(stats.get("pool_available", 0))

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            self._closed = True
        if pool is not None:
            pool.close()

    # -- SqlStore hooks ------------------------------------------------------------------------

    def _read(self, action: str) -> AbstractContextManager[psycopg.Connection[Any]]:
        return self._connection(action)

    def _tx(self, action: str) -> AbstractContextManager[psycopg.Connection[Any]]:
        return self._connection(action)

    def _code_db(self, conn: psycopg.Connection[Any]) -> code.CodeDb:
        return _CodeDb(conn)

    def _fetch(self, action: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query written with ``?`` placeholders (see :mod:`supervisor.store.queries`)."""
        with self._connection(action) as conn:
            return conn.execute(_psycopg_sql(sql), params).fetchall()

    _conversation_sql = "(metadata ->> 'conversation_id')"  # execution_events_conversation
