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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb, set_json_dumps, set_json_loads
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool

from supervisor.alerts.records import AlertRecord
from supervisor.code.records import CodeChange, CodeRecorded, CodeState, CodeVersion, SyncUpdate
from supervisor.records import ActorRecord, Event, Record, RunRecord, TaskState
from supervisor.store import code, outbox, queries
from supervisor.store.base import RefusedFires, Store, StoreError, StoreUnavailable
from supervisor.store.migrations import apply_postgres, load_migrations
from supervisor.store.options import PoolOptions
from supervisor.store.pgcopy import EVENT_COLUMNS, events_stream
from supervisor.store.pgpool import Secret, open_pool, translate
from supervisor.store.urls import redact_url
from supervisor.store.values import (
    SplitBatch,
    clean_text,
    event_texts,
    json_bytes,
    json_text,
    opt_json_text,
)

log = logging.getLogger(__name__)

_Pool = ConnectionPool[psycopg.Connection[Any]]
_Codec = tuple[Callable[[Any], Any], Callable[[Any], Any]]  # (to the database, from it)

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


def _same(value: Any) -> Any:
    return value


def _loads(data: str | bytes) -> Any:
    """orjson, with the stdlib for what it refuses: jsonb prints a float such as 1e20 as a
    21-digit integer, beyond orjson's 64-bit limit."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


_TIMESTAMP: _Codec = (_opt_to_datetime, _opt_from_datetime)
_JSONB: _Codec = (json_text, _same)  # psycopg loads jsonb with _loads
_OPT_JSONB: _Codec = (opt_json_text, _same)
_TEXT: _Codec = (clean_text, _same)
_PLAIN: _Codec = (_same, _same)


class _Table:
    """One record type's table: column order, codecs and the SQL that reads and upserts it."""

    def __init__(
        self,
        name: str,
        record: type[Any],
        *,
        key: tuple[str, ...],
        codecs: dict[str, _Codec],
        extra_columns: tuple[str, ...] = (),
        fence: str | None = None,
    ) -> None:
        self.record = record
        self.columns = [f.name for f in fields(record)]
        texts = {
            f.name: _TEXT for f in fields(record) if f.type in (str, str | None)
        }  # every text column: NULs replaced, as on SQLite
        merged = {**texts, **codecs}
        self._to_db = [merged.get(c, _PLAIN)[0] for c in self.columns]
        self._from_db = [merged.get(c, _PLAIN)[1] for c in self.columns]
        self.select = f"SELECT {_names(self.columns)} FROM {name}"
        insert_columns = [*self.columns, *extra_columns]
        updates = ", ".join(
            f"{_quote(c)} = excluded.{_quote(c)}" for c in self.columns if c not in key
        )
        # a fenced row is changed only by a writer of the same or a later epoch
        where = f" WHERE {name}.{_quote(fence)} <= excluded.{_quote(fence)}" if fence else ""
        values = f"VALUES ({', '.join(['%s'] * len(insert_columns))})"
        self.upsert = (
            f"INSERT INTO {name} ({_names(insert_columns)}) {values} "
            f"ON CONFLICT ({_names(key)}) DO UPDATE SET {updates}{where}"
        )
        # claims (scheduled fires): update our own row, else insert unless any key is taken
        self.claim_insert = (
            f"INSERT INTO {name} ({_names(insert_columns)}) {values} ON CONFLICT DO NOTHING"
        )
        others = [c for c in self.columns if c not in key]
        self._key_index = [self.columns.index(c) for c in key]
        self._other_index = [self.columns.index(c) for c in others]
        self._fence_index = self.columns.index(fence) if fence else None
        self.claim_update = (
            f"UPDATE {name} SET {', '.join(f'{_quote(c)} = %s' for c in others)} WHERE "
            + " AND ".join(f"{_quote(c)} = %s" for c in key)
            + (f" AND {_quote(fence)} <= %s" if fence else "")
        )

    def claim_update_params(self, row: Sequence[Any]) -> list[Any]:
        """A row's values for ``claim_update``: the other columns, the key, the fence."""
        params = [row[i] for i in self._other_index] + [row[i] for i in self._key_index]
        if self._fence_index is not None:
            params.append(row[self._fence_index])
        return params

    def row(self, record: Any) -> list[Any]:
        return [
            to_db(getattr(record, column))
            for column, to_db in zip(self.columns, self._to_db, strict=True)
        ]

    def record_from(self, row: Sequence[Any]) -> Any:
        return self.record(
            **{
                column: from_db(value)
                for column, from_db, value in zip(self.columns, self._from_db, row, strict=True)
            }
        )


def _quote(identifier: str) -> str:
    return f'"{identifier}"'  # "trigger" is a keyword; quoting every column keeps SQL uniform


def _names(columns: Sequence[str]) -> str:
    return ", ".join(_quote(c) for c in columns)


_RUNS = _Table(
    "runs",
    RunRecord,
    key=("run_id", "attempt"),
    codecs={
        # json columns take the text as it is (NULs arrive escaped as \u0000, which json keeps)
        "input_json": _PLAIN,
        "output_json": _PLAIN,
        **{c: _TIMESTAMP for c in ("queued_at", "scheduled_for", "started_at", "finished_at")},
    },
    fence="epoch",
)
_TASK_STATE = _Table(
    "task_state",
    TaskState,
    key=("actor",),
    codecs={
        "last_run_at": _TIMESTAMP,
        "next_run_at": _TIMESTAMP,
        "updated_at": _TIMESTAMP,
        "metadata": _JSONB,
    },
)
_ACTORS = _Table(
    "actors",
    ActorRecord,
    key=("name",),
    codecs={"schedule": _OPT_JSONB, "config": _JSONB, "updated_at": _TIMESTAMP},
    extra_columns=("created_at",),  # set by the first insert, kept by every later upsert
)
_EVENTS = _Table(
    "execution_events",
    Event,
    key=("event_id",),
    codecs={"metadata": _JSONB, "created_at": _TIMESTAMP},
)

# Events: binary COPY into the table; on a duplicate event_id, the same rows (with their batch
# position) through the staging table and ON CONFLICT. Identity ids (the tie-break of equal
# times) follow the batch order either way.
_COPY_EVENTS = f"COPY execution_events ({_names(EVENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_EVENT_ID_KEY = "execution_events_pkey"
_STAGE = "actor_supervisor_events_in"
_STAGE_DDL = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} (ord integer NOT NULL, "
    "event_id text, event_type text, aggregate_type text, aggregate_id text, "
    "correlation_id text, metadata jsonb, created_at timestamptz) ON COMMIT DELETE ROWS"
)
_COPY_STAGE = f"COPY {_STAGE} ({_names(['ord', *EVENT_COLUMNS])}) FROM STDIN (FORMAT BINARY)"
_MOVE_STAGE = (
    f"INSERT INTO execution_events ({_names(EVENT_COLUMNS)}) "
    f"SELECT {_names(EVENT_COLUMNS)} FROM {_STAGE} ORDER BY ord "
    "ON CONFLICT (event_id) DO NOTHING"
)


_PIPELINE_MAX_EVENTS = 16  # measured: below ~10-20 events a pipeline beats COPY's round trips
_INSERT_EVENT = (
    f"INSERT INTO execution_events ({_names(_EVENTS.columns)}) "
    f"VALUES ({', '.join(['%s'] * len(_EVENTS.columns))}) ON CONFLICT (event_id) DO NOTHING"
)


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


class _BatchRows:
    """A batch split by table; runs, states and actors converted before any connection is
    taken. Events are converted while they are sent (see :mod:`supervisor.store.pgcopy`)."""

    def __init__(self, records: Sequence[Record]) -> None:
        split = SplitBatch(records)
        with _encoding():
            self.runs = [_RUNS.row(r) for r in split.runs]
            self.fires = [(r.run_id, _RUNS.row(r)) for r in split.fires]
            self.states = [_TASK_STATE.row(s) for s in split.states]
            self.actors = [(*_ACTORS.row(a), to_datetime(a.updated_at)) for a in split.actors]
        self.events = split.events
        self.code = split.code
        self.alerts = split.alerts

    def __bool__(self) -> bool:
        return bool(
            self.runs
            or self.fires
            or self.states
            or self.actors
            or self.events
            or self.code
            or self.alerts
        )


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
        with self._conn.cursor() as cur, _encoding():
            cur.executemany(_INSERT_EVENT, map(_event_params, found))


def _apply_code(db: code.CodeDb, records: Sequence[CodeChange | SyncUpdate]) -> None:
    for record in records:
        if isinstance(record, CodeChange):
            code.record_version(db, record)
        else:
            code.update_sync(db, record)


@contextmanager
def _encoding() -> Iterator[None]:
    try:
        yield
    except (TypeError, ValueError, OverflowError) as exc:  # orjson and datetime limits
        raise StoreError(f"a record in the batch cannot be encoded: {exc}") from exc


class PostgresStore(Store):
    """A :class:`Store` in a PostgreSQL database, through a connection pool.

    Opening waits for the server up to ``options.wait_s`` (see :func:`open_pool`).
    """

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
        for name in applied:
            log.info(
                "%s: applied migration %s",
                self.description,
                name,
                extra={"event": "migration_applied", "migration": name},
            )
        return applied

    def write_batch(self, records: Sequence[Record]) -> None:
        rows = _BatchRows(records)
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

    def _write(self, rows: _BatchRows, *, replay: bool) -> None:
        refused: list[str] = []
        self._write_rows(rows, replay=replay, refused=refused)
        self.refused.add(refused)  # only once the transaction committed

    def _write_rows(self, rows: _BatchRows, *, replay: bool, refused: list[str]) -> None:
        with self._connection("write a batch") as conn, conn.cursor() as cur:
            if rows.code:  # rare, and each change reads before it writes: no pipeline for these
                _apply_code(_CodeDb(conn), rows.code)
            for run_id, row in rows.fires:  # few (one per scheduled fire), never through COPY
                cur.execute(_RUNS.claim_update, _RUNS.claim_update_params(row))
                if cur.rowcount:
                    continue
                cur.execute(_RUNS.claim_insert, row)
                if not cur.rowcount:
                    refused.append(run_id)
            if rows.alerts:  # rare as well, and in order: a folded repeat updates its row
                outbox.write(_CodeDb(conn), rows.alerts)
            if len(rows.events) <= _PIPELINE_MAX_EVENTS:
                with conn.pipeline():
                    self._upsert(cur, rows)
                    if rows.events:
                        with _encoding():  # the metadata is dumped as the statement is sent
                            cur.executemany(_INSERT_EVENT, map(_event_params, rows.events))
                    conn.commit()  # in the pipeline too: the whole batch is one round trip
                return
            self._upsert(cur, rows)
            if replay:
                cur.execute(_STAGE_DDL)  # once per connection; only replays need it
                with _encoding(), cur.copy(_COPY_STAGE) as copy:
                    for chunk in events_stream(rows.events, numbered=True):
                        copy.write(chunk)
                cur.execute(_MOVE_STAGE)
            else:
                try:
                    with _encoding(), cur.copy(_COPY_EVENTS) as copy:
                        for chunk in events_stream(rows.events):
                            copy.write(chunk)
                except psycopg.errors.UniqueViolation as exc:
                    if exc.diag.constraint_name != _EVENT_ID_KEY:
                        raise
                    raise _DuplicateEvent from exc  # the transaction rolls back on the way out

    @staticmethod
    def _upsert(cur: psycopg.Cursor[Any], rows: _BatchRows) -> None:
        if rows.runs:
            cur.executemany(_RUNS.upsert, rows.runs)
        if rows.states:
            cur.executemany(_TASK_STATE.upsert, rows.states)
        if rows.actors:
            cur.executemany(_ACTORS.upsert, rows.actors)

    def list_runs(
        self, *, actor: str | None = None, run_id: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        sql, params = queries.list_runs(_RUNS.select, actor=actor, run_id=run_id, limit=limit)
        return [_RUNS.record_from(row) for row in self._fetch("list runs", sql, params)]

    def find_runs(
        self,
        *,
        actor: str | None = None,
        status: str | None = None,
        since: float | None = None,
        before: tuple[float, int, str] | None = None,
        limit: int = 50,
        latest_only: bool = False,
    ) -> list[RunRecord]:
        sql, params = queries.find_runs(
            _RUNS.select, to_datetime, actor=actor, status=status, since=since, before=before,
            limit=limit, latest_only=latest_only,
        )  # fmt: skip
        return [_RUNS.record_from(row) for row in self._fetch("find runs", sql, params)]

    def find_events(
        self,
        *,
        aggregate_type: str | None = None,
        aggregate_id: str | None = None,
        correlation_id: str | None = None,
        since: float | None = None,
        before: str | None = None,
        limit: int = 200,
    ) -> list[Event]:
        sql, params = queries.find_events(
            _EVENTS.select, to_datetime, aggregate_type=aggregate_type, aggregate_id=aggregate_id,
            correlation_id=correlation_id, since=since, before=before, limit=limit,
        )  # fmt: skip
        return [_EVENTS.record_from(row) for row in self._fetch("find events", sql, params)]

    def last_runs(self) -> dict[str, RunRecord]:
        sql, params = queries.latest_attempt_per_actor(_RUNS.columns)
        runs = [_RUNS.record_from(row) for row in self._fetch("find last runs", sql, params)]
        return {run.actor: run for run in runs}

    def run_ids_with_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        sql, params = queries.run_ids_with_prefix(prefix, limit)
        return [row[0] for row in self._fetch("find run ids", sql, params)]

    def list_events(
        self,
        *,
        aggregate_type: str | None = None,
        aggregate_id: str | None = None,
        correlation_id: str | None = None,
        since: float | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        sql, params = queries.list_events(
            _EVENTS.select,
            to_datetime,
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            correlation_id=correlation_id,
            since=since,
            limit=limit,
        )
        return [_EVENTS.record_from(row) for row in self._fetch("list events", sql, params)]

    def load_task_states(self) -> dict[str, TaskState]:
        rows = self._fetch("load task states", f"{_TASK_STATE.select} ORDER BY actor")
        states = [_TASK_STATE.record_from(row) for row in rows]
        return {state.actor: state for state in states}

    def load_actors(self) -> dict[str, ActorRecord]:
        rows = self._fetch("load actors", f"{_ACTORS.select} ORDER BY name")
        actors = [_ACTORS.record_from(row) for row in rows]
        return {actor.name: actor for actor in actors}

    def unfinished_runs(self, before_epoch: int | None = None) -> list[RunRecord]:
        sql, params = queries.unfinished_runs(_RUNS.select, before_epoch)
        return [_RUNS.record_from(row) for row in self._fetch("list unfinished runs", sql, params)]

    def idempotency_keys(self, since: float) -> dict[tuple[str, str], str]:
        sql, params = queries.idempotency_keys(to_datetime, since)
        rows = self._fetch("load idempotency keys", sql, params)
        return {(actor, key): run_id for actor, key, run_id in rows}

    def record_code_version(self, change: CodeChange) -> CodeRecorded:
        with self._connection("record a code version") as conn:
            return code.record_version(_CodeDb(conn), change)

    def code_history(self, actor: str, *, limit: int | None = None) -> list[CodeVersion]:
        with self._connection("read the code history") as conn:
            return code.history(_CodeDb(conn), actor, limit)

    def code_version(
        self, actor: str, *, history_id: str | None = None, version_tag: str | None = None
    ) -> CodeVersion | None:
        with self._connection("read a code version") as conn:
            return code.find_version(
                _CodeDb(conn), actor, history_id=history_id, version_tag=version_tag
            )

    def load_code_states(self, actors: Sequence[str] | None = None) -> dict[str, CodeState]:
        with self._connection("load the actors' code") as conn:
            return code.code_states(_CodeDb(conn), actors)

    def save_alert(self, alert: AlertRecord) -> None:
        with self._connection("save an alert") as conn:
            outbox.save(_CodeDb(conn), alert)

    def pending_alerts(self, limit: int = 10000) -> list[AlertRecord]:
        with self._connection("read pending alerts") as conn:
            return outbox.pending(_CodeDb(conn), limit)

    def list_alerts(
        self, *, status: str | None = None, destination: str | None = None, limit: int = 50
    ) -> list[AlertRecord]:
        with self._connection("list alerts") as conn:
            return outbox.listing(
                _CodeDb(conn), status=status, destination=destination, limit=limit
            )

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

    # -- helpers -------------------------------------------------------------------------------

    def _fetch(self, action: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query written with ``?`` placeholders (see :mod:`supervisor.store.queries`)."""
        with self._connection(action) as conn:
            return conn.execute(_psycopg_sql(sql), params).fetchall()
