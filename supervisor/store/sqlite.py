"""The embedded SQLite store (the default): one file, WAL mode, one connection behind a lock.

Modelled on huey's ``SqliteStorage``: autocommit connection (``isolation_level=None``) with
explicit ``BEGIN IMMEDIATE`` for writes, so a writer takes the lock up front instead of failing
to upgrade a read transaction half-way. WAL lets CLI processes read while the supervisor writes.
The batch writer thread writes and the main thread reads at start-up, so the connection is
shared across threads (``check_same_thread=False``) and every use holds ``_lock``.
"""

import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from supervisor.records import Event, Record
from supervisor.store import code, outbox, workflows
from supervisor.store.base import RefusedFires, StoreError, StoreUnavailable
from supervisor.store.migrations import apply_sqlite, load_migrations
from supervisor.store.sql import (
    BatchRows,
    Codec,
    SqlStore,
    apply_code,
    claim_fires,
    make_tables,
)
from supervisor.store.values import json_text, opt_json_text

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


_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def to_text(ts: float) -> str:
    """Epoch seconds to ``2026-11-29T15:15:24.123456Z`` (microseconds; text order = time order).

    The writer's hot path: the times of a batch fall in the same second or a few, so the
    date and time of day are formatted once per second and the microseconds appended.
    """
    global _last_second
    second, micros = divmod(round(ts * 1_000_000), 1_000_000)
    cached, text = _last_second
    if second != cached:
        text = (_EPOCH + timedelta(seconds=second)).isoformat()
        _last_second = (second, text)
    return f"{text}.{micros:06d}Z"


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


# ---------------------------------------------------------------------------------------------
# Tables: for each record type, its columns (the dataclass fields) and how each is converted.

_TIMESTAMP: Codec = (_opt_to_text, _opt_from_text)
_JSON: Codec = (json_text, _from_json)  # NULs replaced, as PostgreSQL must (store/values.py)
_OPT_JSON: Codec = (opt_json_text, _opt_from_json)

_TABLES = make_tables(
    placeholder="?",
    timestamp=_TIMESTAMP,
    to_timestamp=to_text,
    json=_JSON,
    opt_json=_OPT_JSON,
    boolean=(int, bool),
)
_RUNS, _EVENTS = _TABLES.runs, _TABLES.events


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


def _is_busy(exc: StoreUnavailable) -> bool:
    """Whether a write failed because another connection held the lock (SQLITE_BUSY, LOCKED)."""
    code = getattr(exc.__cause__, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (5, 6)


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_dev, info.st_ino)


class SqliteStore(SqlStore[sqlite3.Connection]):
    """A :class:`Store` in one SQLite file; parent folders are created."""

    _tables = _TABLES

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
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        self._busy_now = self._busy_timeout_ms  # the connection's, as _connection() last set it
        self._writes_wait = True  # False during write_batch_now, which holds the lock
        self._synchronous = synchronous.upper()
        self._checkpointer: sqlite3.Connection | None = None  # see checkpoint()
        self._checkpoint_lock = threading.Lock()
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
                self._configure(conn, self._synchronous, busy_timeout_s)
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

    def _connection(self, *, waits: bool = True) -> sqlite3.Connection:
        """The connection, waiting up to the busy timeout for another process's lock, or
        (``waits=False``) failing at once. Call with the lock held."""
        conn = self._conn
        if conn is None:
            raise StoreError(f"{self.description}: the store is closed")
        if os.getpid() != self._pid:
            # a SQLite connection must never cross fork(); the child opens its own store
            raise StoreError(
                f"{self.description}: opened in process {self._pid}, used in {os.getpid()}"
            )
        busy = self._busy_timeout_ms if waits else 0
        if busy != self._busy_now:  # set only on a change: the loop's commits in a row pay none
            conn.execute(f"PRAGMA busy_timeout = {busy}")
            self._busy_now = busy
        return conn

    @contextmanager
    def _tx(self, action: str) -> Iterator[sqlite3.Connection]:
        """A write transaction: ``BEGIN IMMEDIATE``, then commit, or roll back on any error.
        It waits for another process's lock unless :meth:`write_batch_now` is the caller (the
        flag is read under the lock, which that method holds while it is False)."""
        with self._lock, self._translate(action):
            conn = self._connection(waits=self._writes_wait)
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
        self._log_applied(applied)
        return applied

    def write_batch(self, records: Sequence[Record]) -> None:
        rows = BatchRows(records, _TABLES)
        if not rows:
            return
        self._check_file()
        with self._tx("write a batch") as conn:
            if rows.code:
                apply_code(_CodeDb(conn), rows.code)
            refused = claim_fires(conn.execute, _RUNS, rows.fires)
            rows.upsert(conn.executemany, _TABLES)
            if rows.events:
                conn.executemany(_EVENTS.insert, rows.events)
            if rows.alerts:
                outbox.write(_CodeDb(conn), rows.alerts)
            if rows.workflows:
                workflows.write(_CodeDb(conn), rows.workflows)
        self.refused.add(refused)

    def write_batch_now(self, records: Sequence[Record]) -> bool:
        if not self._lock.acquire(blocking=False):
            return False  # another thread (the writer, a reader) is on the connection
        self._writes_wait = False  # another process writing: say so at once
        try:
            self.write_batch(records)
        except StoreUnavailable as exc:
            if _is_busy(exc):
                return False
            raise
        finally:
            self._writes_wait = True
            self._lock.release()
        return True

    def defer_checkpoints(self) -> bool:
        with self._lock, self._translate("defer checkpoints"):
            self._connection().execute("PRAGMA wal_autocheckpoint = 0")
        return True

    def checkpoint(self) -> None:
        """A PASSIVE checkpoint on a connection of its own: it takes no write lock, so the
        loop's commits go on meanwhile instead of waiting behind its writes and fsyncs on the
        store's one connection (the slowest one-client runs waited for it)."""
        with self._checkpoint_lock, self._translate("checkpoint"):
            conn = self._checkpoint_connection()
            if conn is not None:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _checkpoint_connection(self) -> sqlite3.Connection | None:
        """The checkpointer's connection, opened on first use; None while the file is not the
        one the store opened (the next write reports that), and never a new empty file."""
        self._connection()  # open, and in this process
        if self._checkpointer is None:
            if _file_identity(self.path) != self._identity:
                return None
            uri = f"file:{urllib.parse.quote(str(self.path))}?mode=rw"
            conn = sqlite3.connect(uri, isolation_level=None, check_same_thread=False, uri=True)
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")  # the checkpoint's syncs
            self._checkpointer = conn
        return self._checkpointer

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

    def close(self) -> None:
        with self._checkpoint_lock:
            checkpointer, self._checkpointer = self._checkpointer, None
            if checkpointer is not None:
                checkpointer.close()
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def _fetch(self, action: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read(action) as conn:
            return conn.execute(sql, params).fetchall()

    def _code_db(self, conn: sqlite3.Connection) -> code.CodeDb:
        return _CodeDb(conn)

    # -- beyond the ABC ------------------------------------------------------------------------

    def settings(self) -> dict[str, str | int]:
        """The connection's effective journal mode, synchronous level and busy timeout."""
        with self._read("read settings") as conn:
            journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
            level = conn.execute("PRAGMA synchronous").fetchone()[0]
            busy = conn.execute("PRAGMA busy_timeout").fetchone()[0]  # _read's: the full one
        names = {0: "off", 1: "normal", 2: "full", 3: "extra"}
        return {
            "journal_mode": journal,
            "synchronous": names.get(level, str(level)),
            "busy_timeout_ms": busy,
        }

    _conversation_sql = (
        "json_extract(metadata, '$.conversation_id')"  # execution_events_conversation
    )
