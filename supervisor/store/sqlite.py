"""The embedded SQLite store (the default): one file, WAL mode, one connection behind a lock.

Modelled on huey's ``SqliteStorage``: autocommit connection (``isolation_level=None``) with
explicit ``BEGIN IMMEDIATE`` for writes, so a writer takes the lock up front instead of failing
to upgrade a read transaction half-way. WAL lets CLI processes read while the supervisor writes.
The batch writer thread writes and the main thread reads at start-up, so the connection is
shared across threads (``check_same_thread=False``) and every use holds ``_lock``.
"""

import logging
import operator
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from supervisor.alerts.records import AlertRecord
from supervisor.code.records import CodeChange, CodeRecorded, CodeState, CodeVersion, SyncUpdate
from supervisor.records import ActorRecord, Event, Record, RunRecord, TaskState
from supervisor.store import code, outbox, queries
from supervisor.store.base import RefusedFires, Store, StoreError, StoreUnavailable
from supervisor.store.migrations import apply_sqlite, load_migrations
from supervisor.store.values import SplitBatch, clean_text, json_text, opt_json_text

log = logging.getLogger(__name__)

SYNCHRONOUS_MODES = frozenset({"off", "normal", "full", "extra"})

# Primary result codes that mean "not now" rather than "never": another process holds the
# lock, the disk failed or filled up, the file cannot be opened or written at the moment.
_UNAVAILABLE_CODES = frozenset(
    {
        5,  # SQLITE_BUSY: "database is locked"
        6,  # SQLITE_LOCKED
        8,  # SQLITE_READONLY: permissions or a read-only mount; fixable by the operator
        10,  # SQLITE_IOERR: "disk I/O error"
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL: WAL lock protocol race
    }
)

# ---------------------------------------------------------------------------------------------
# Values: timestamps as fixed-width ISO text, JSON as text.

_EPOCH = datetime(1970, 1, 1)
_SECOND = timedelta(seconds=1)


def to_text(ts: float) -> str:
    """Epoch seconds to ``2026-11-29T15:15:24.123456Z`` (microseconds; text order = time order)."""
    moment = _EPOCH + timedelta(microseconds=round(ts * 1_000_000))
    return moment.isoformat(timespec="microseconds") + "Z"


def from_text(text: str) -> float:
    """The inverse of :func:`to_text`."""
    return (datetime.fromisoformat(text.removesuffix("Z")) - _EPOCH) / _SECOND


def _opt_to_text(ts: float | None) -> str | None:
    return None if ts is None else to_text(ts)


def _opt_from_text(text: str | None) -> float | None:
    return None if text is None else from_text(text)


def _from_json(text: str) -> Any:
    return orjson.loads(text)


def _opt_from_json(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _same(value: Any) -> Any:
    return value


# ---------------------------------------------------------------------------------------------
# Tables: for each record type, its columns (the dataclass fields) and how each is converted.

_Codec = tuple[Callable[[Any], Any], Callable[[Any], Any]]  # (to the database, from it)
_TIMESTAMP: _Codec = (_opt_to_text, _opt_from_text)
_JSON: _Codec = (json_text, _from_json)  # NULs replaced, as PostgreSQL must (store/values.py)
_OPT_JSON: _Codec = (opt_json_text, _opt_from_json)
_TEXT: _Codec = (clean_text, _same)
_BOOL: _Codec = (int, bool)
_PLAIN: _Codec = (_same, _same)


def _texts(record: type[Any], *json_columns: str) -> dict[str, _Codec]:
    """``_TEXT`` for every ``str`` field of ``record`` except the JSON-text ones."""
    return {
        f.name: _TEXT
        for f in fields(record)
        if f.type in (str, str | None) and f.name not in json_columns
    }


class _Table:
    """One record type's table: column order, value codecs and the SQL that reads and writes it.

    ``insert`` upserts by ``key`` (every non-key column takes the new value), or for an
    ``append_only`` table skips a row whose key exists. ``extra_columns`` are inserted after the
    record's own columns and never updated (``actors.created_at``).
    """

    def __init__(
        self,
        name: str,
        record: type[Any],
        *,
        key: tuple[str, ...],
        codecs: dict[str, _Codec],
        extra_columns: tuple[str, ...] = (),
        append_only: bool = False,
        fence: str | None = None,
    ) -> None:
        self.record = record
        self.columns = [f.name for f in fields(record)]
        self._values = operator.attrgetter(*self.columns)  # one C call for every column
        self._encode = [
            (i, codecs[c][0]) for i, c in enumerate(self.columns) if c in codecs
        ]  # only the columns that need converting
        self._from_db = [codecs.get(c, _PLAIN)[1] for c in self.columns]
        self.select = f"SELECT {_names(self.columns)} FROM {name}"
        insert_columns = [*self.columns, *extra_columns]
        updates = ", ".join(
            f"{_quote(c)} = excluded.{_quote(c)}" for c in self.columns if c not in key
        )
        action = "DO NOTHING" if append_only else f"DO UPDATE SET {updates}"
        if fence is not None:  # a row is changed only by a writer of the same or a later epoch
            action += f" WHERE {name}.{_quote(fence)} <= excluded.{_quote(fence)}"
        values = f"VALUES ({', '.join('?' * len(insert_columns))})"
        self.insert = (
            f"INSERT INTO {name} ({_names(insert_columns)}) {values} "
            f"ON CONFLICT ({_names(key)}) {action}"
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
            f"UPDATE {name} SET {', '.join(f'{_quote(c)} = ?' for c in others)} WHERE "
            + " AND ".join(f"{_quote(c)} = ?" for c in key)
            + (f" AND {_quote(fence)} <= ?" if fence else "")
        )

    def claim_update_params(self, row: Sequence[Any]) -> list[Any]:
        """A row's values for ``claim_update``: the other columns, the key, the fence."""
        params = [row[i] for i in self._other_index] + [row[i] for i in self._key_index]
        if self._fence_index is not None:
            params.append(row[self._fence_index])
        return params

    def row(self, record: Any) -> list[Any]:
        """The record's column values, converted where needed (the writer's hot path)."""
        values = list(self._values(record))
        for index, to_db in self._encode:
            values[index] = to_db(values[index])
        return values

    def record_from(self, row: Sequence[Any]) -> Any:
        return self.record(
            **{
                column: from_db(value)
                for column, from_db, value in zip(self.columns, self._from_db, row, strict=True)
            }
        )


def _quote(identifier: str) -> str:
    # "trigger" is an SQL keyword; quoting every column keeps the generated SQL uniform.
    return f'"{identifier}"'


def _names(columns: Sequence[str]) -> str:
    return ", ".join(_quote(c) for c in columns)


_RUNS = _Table(
    "runs",
    RunRecord,
    key=("run_id", "attempt"),
    codecs={
        **_texts(RunRecord, "input_json", "output_json"),  # JSON text: NULs arrive escaped
        **{c: _TIMESTAMP for c in ("queued_at", "scheduled_for", "started_at", "finished_at")},
    },
    fence="epoch",
)
_TASK_STATE = _Table(
    "task_state",
    TaskState,
    key=("actor",),
    codecs={
        **_texts(TaskState),
        "last_run_at": _TIMESTAMP,
        "next_run_at": _TIMESTAMP,
        "updated_at": _TIMESTAMP,
        "is_paused": _BOOL,
        "metadata": _JSON,
    },
)
_ACTORS = _Table(
    "actors",
    ActorRecord,
    key=("name",),
    codecs={
        **_texts(ActorRecord),
        "schedule": _OPT_JSON,
        "config": _JSON,
        "updated_at": _TIMESTAMP,
    },
    extra_columns=("created_at",),  # set by the first insert, kept by every later upsert
)
_EVENTS = _Table(
    "execution_events",
    Event,
    key=("event_id",),
    codecs={**_texts(Event), "metadata": _JSON, "created_at": _TIMESTAMP},
    append_only=True,  # a replayed batch must not touch events already stored
)


class _BatchRows:
    """A batch split by table, coalesced by key (the last version wins), converted to rows.

    Conversion happens before the transaction opens, so a record that cannot be encoded fails
    the batch without touching the database.
    """

    def __init__(self, records: Sequence[Record]) -> None:
        split = SplitBatch(records)
        try:
            self.runs = [_RUNS.row(r) for r in split.runs]
            self.fires = [(r.run_id, _RUNS.row(r)) for r in split.fires]
            self.states = [_TASK_STATE.row(s) for s in split.states]
            self.actors = [(*_ACTORS.row(a), to_text(a.updated_at)) for a in split.actors]
            self.events = [_EVENTS.row(e) for e in split.events]
        except (TypeError, ValueError, OverflowError) as exc:  # orjson and datetime limits
            raise StoreError(f"a record in the batch cannot be encoded: {exc}") from exc
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


class _CodeDb(code.CodeDb):
    """The code-history logic on this connection; the write lock is the actor lock."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._conn.execute(sql, params)

    def to_db(self, ts: float | None) -> Any:
        return _opt_to_text(ts)

    def from_db(self, value: Any) -> float | None:
        return _opt_from_text(value)

    def lock_actor(self, actor: str) -> None:
        """Nothing to do: writes run under ``BEGIN IMMEDIATE``, SQLite's one write lock."""

    def add_events(self, found: Sequence[Event]) -> None:
        self._conn.executemany(_EVENTS.insert, [_EVENTS.row(e) for e in found])


def _apply_code(db: code.CodeDb, records: Sequence[CodeChange | SyncUpdate]) -> None:
    for record in records:
        if isinstance(record, CodeChange):
            code.record_version(db, record)
        else:
            code.update_sync(db, record)


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_dev, info.st_ino)


class SqliteStore(Store):
    """A :class:`Store` in one SQLite file; parent folders are created."""

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "normal",
        busy_timeout_s: float = 5.0,
        read_only: bool = False,
    ) -> None:
        """``read_only``: open an existing file with ``mode=ro`` (the HTTP process's view): it
        cannot write, and does not create or reconfigure the file."""
        if synchronous.lower() not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(SYNCHRONOUS_MODES)}")
        self.path = Path(path).absolute()
        self.description = f"sqlite:{self.path}"
        self.refused = RefusedFires()
        self._identity: tuple[int, int] | None = None  # the file's (device, inode), checked
        self._replaced = False  # before each batch; set once the file is open
        self._lock = threading.RLock()
        self._pid = os.getpid()
        if read_only:
            with self._translate("open the database read-only"):
                uri = f"file:{urllib.parse.quote(str(self.path))}?mode=ro"
                conn = sqlite3.connect(
                    uri, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False,
                    uri=True,
                )  # fmt: skip
                conn.execute("PRAGMA query_only = 1")
            self._conn: sqlite3.Connection | None = conn
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.description}: cannot create its folder: {exc}") from exc
        with self._translate("open the database"):
            conn = sqlite3.connect(
                self.path,
                timeout=busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                self._configure(conn, synchronous.upper(), busy_timeout_s)
            except BaseException:
                conn.close()
                raise
        self._conn = conn
        self._identity = _file_identity(self.path)

    def _configure(self, conn: sqlite3.Connection, synchronous: str, busy_timeout_s: float) -> None:
        # Switching a new file to WAL needs an exclusive lock and does not wait on the busy
        # timeout: several processes opening the same fresh file at once must retry it.
        deadline = time.monotonic() + busy_timeout_s
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if mode != "wal":
            log.warning(
                "%s: WAL is not available here (journal_mode=%s); readers will block writers",
                self.description,
                mode,
                extra={"event": "store_no_wal"},
            )
        conn.execute(f"PRAGMA synchronous = {synchronous}")  # validated against SYNCHRONOUS_MODES

    # -- the one translation boundary ----------------------------------------------------------

    @contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        """sqlite3 errors to ``StoreUnavailable`` (transient) or ``StoreError`` (all others)."""
        try:
            yield
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            message = f"{self.description}: cannot {action}: {exc}"
            if code is not None and code & 0xFF in _UNAVAILABLE_CODES:
                raise StoreUnavailable(message) from exc
            raise StoreError(message) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.description}: the store is closed")
        if os.getpid() != self._pid:
            # a SQLite connection must never cross fork(); the child opens its own store
            raise StoreError(
                f"{self.description}: opened in process {self._pid}, used in {os.getpid()}"
            )
        return self._conn

    @contextmanager
    def _tx(self, action: str) -> Iterator[sqlite3.Connection]:
        """A write transaction: ``BEGIN IMMEDIATE``, then commit, or roll back on any error."""
        with self._lock, self._translate(action):
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise

    @contextmanager
    def _read(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._translate(action):
            yield self._connection()

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            # the original error is the one worth raising; SQLite rolls back on close anyway
            log.exception("%s: rollback failed", self.description)

    # -- Store ---------------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        migrations = load_migrations("sqlite")
        with self._lock, self._translate("migrate"):
            applied = apply_sqlite(self._connection(), migrations, now=lambda: to_text(time.time()))
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
        self._check_file()
        refused: list[str] = []
        with self._tx("write a batch") as conn:
            if rows.code:
                _apply_code(_CodeDb(conn), rows.code)
            for run_id, row in rows.fires:  # few: one per scheduled fire
                if conn.execute(_RUNS.claim_update, _RUNS.claim_update_params(row)).rowcount:
                    continue
                if not conn.execute(_RUNS.claim_insert, row).rowcount:
                    refused.append(run_id)
            if rows.runs:
                conn.executemany(_RUNS.insert, rows.runs)
            if rows.states:
                conn.executemany(_TASK_STATE.insert, rows.states)
            if rows.actors:
                conn.executemany(_ACTORS.insert, rows.actors)
            if rows.events:
                conn.executemany(_EVENTS.insert, rows.events)
            if rows.alerts:
                outbox.write(_CodeDb(conn), rows.alerts)
        self.refused.add(refused)

    def _check_file(self) -> None:
        """The open connection writes to the inode it opened: if the path was removed or now
        names another file, every write would go to a file no one will ever read again.

        :raises StoreUnavailable: the writer spools until a restart opens the file anew.
        """
        found = _file_identity(self.path)
        if found == self._identity:
            return
        what = "removed" if found is None else "replaced by another file"
        if not self._replaced:
            self._replaced = True
            log.critical(
                "%s: the database file was %s while the supervisor was running; writes go to "
                "the spool from now on, and a restart replays them into the file then at %s",
                self.description,
                what,
                self.path,
                extra={"event": "store_file_replaced"},
            )
        raise StoreUnavailable(f"{self.description}: the database file was {what}")

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
            _RUNS.select, to_text, actor=actor, status=status, since=since, before=before,
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
            _EVENTS.select, to_text, aggregate_type=aggregate_type, aggregate_id=aggregate_id,
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
            to_text,
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
        sql, params = queries.idempotency_keys(to_text, since)
        rows = self._fetch("load idempotency keys", sql, params)
        return {(actor, key): run_id for actor, key, run_id in rows}

    def record_code_version(self, change: CodeChange) -> CodeRecorded:
        with self._tx("record a code version") as conn:
            return code.record_version(_CodeDb(conn), change)

    def code_history(self, actor: str, *, limit: int | None = None) -> list[CodeVersion]:
        with self._read("read the code history") as conn:
            return code.history(_CodeDb(conn), actor, limit)

    def code_version(
        self, actor: str, *, history_id: str | None = None, version_tag: str | None = None
    ) -> CodeVersion | None:
        with self._read("read a code version") as conn:
            return code.find_version(
                _CodeDb(conn), actor, history_id=history_id, version_tag=version_tag
            )

    def load_code_states(self, actors: Sequence[str] | None = None) -> dict[str, CodeState]:
        with self._read("load the actors' code") as conn:
            return code.code_states(_CodeDb(conn), actors)

    def save_alert(self, alert: AlertRecord) -> None:
        with self._tx("save an alert") as conn:
            outbox.save(_CodeDb(conn), alert)

    def pending_alerts(self, limit: int = 10000) -> list[AlertRecord]:
        with self._read("read pending alerts") as conn:
            return outbox.pending(_CodeDb(conn), limit)

    def list_alerts(
        self, *, status: str | None = None, destination: str | None = None, limit: int = 50
    ) -> list[AlertRecord]:
        with self._read("list alerts") as conn:
            return outbox.listing(
                _CodeDb(conn), status=status, destination=destination, limit=limit
            )

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def _fetch(self, action: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read(action) as conn:
            return conn.execute(sql, params).fetchall()

    # -- beyond the ABC ------------------------------------------------------------------------

    def settings(self) -> dict[str, str | int]:
        """The connection's effective journal mode, synchronous level and busy timeout."""
        with self._read("read settings") as conn:
            journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
            level = conn.execute("PRAGMA synchronous").fetchone()[0]
            busy = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        names = {0: "off", 1: "normal", 2: "full", 3: "extra"}
        return {
            "journal_mode": journal,
            "synchronous": names.get(level, str(level)),
            "busy_timeout_ms": busy,
        }
