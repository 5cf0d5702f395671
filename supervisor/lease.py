"""One supervisor per store: the lease, and the fencing epoch ("term") it hands out.

A second supervisor on the same store must not run: two of them double-fire every schedule and
each one's start-up recovery re-runs the other's runs. So a supervisor takes the store's lease
before it reads any state, and refuses to start (naming the holder) when it cannot, or, with
``--standby``, waits and takes over when the lease frees.

- **SQLite** (one host by nature): an exclusive ``flock`` on ``<database>.lease`` beside the
  database file. The kernel drops it when the holder dies, however it dies; the file names the
  holder for the error message. The holder checks that the lock file is still the one it
  locked (device and inode), since a new file at that path could be locked by another process.
- **PostgreSQL**: a row of ``supervisor_lease`` judged by the *database's* clock
  (``expires_at = now() + ttl``) and renewed every ``ttl / 4`` by a keeper thread, plus a
  session advisory lock held on a dedicated connection (not a pooled one) as the fast path.
  The advisory lock alone is not enough: the server can drop it (failover,
  ``pg_terminate_backend``) while the client still believes it holds it. So a newcomer takes
  the lease only when the advisory lock is free *and* the row has expired (or was released),
  and the holder trusts its lease only until ``ttl * TRUST`` after the start of its last
  successful renewal, measured on its own monotonic clock: it stops acting before any newcomer
  can start. A dead lock connection is noticed by the failed renewal; the keeper reconnects and
  renews as long as no one else took the lease.

Each acquisition bumps ``term``; every run row the supervisor writes carries it (``epoch``),
the stores refuse a run update from an older epoch, and start-up recovery only touches runs of
earlier epochs.
"""

import abc
import contextlib
import fcntl
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.errors import StartupError

log = logging.getLogger(__name__)

LEASE_NAME = "store"
STANDBY_POLL_S = 0.5  # how often a standby tries the lease
TRUST = 0.75  # the holder trusts its lease for this share of the ttl after a renewal began
# pg_try_advisory_lock(LEASE_LOCK_CLASS, 0): "the store's lease" ("leas" in ASCII)
LEASE_LOCK_CLASS = 0x6C656173


class LeaseHeld(StartupError):
    """Another supervisor holds the store's lease."""


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lease: for the refusal message and ``status``."""

    host: str
    pid: int
    since: float | None
    instance: str = ""

    def describe(self) -> str:
        when = "?"
        if self.since is not None:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        return f"host {self.host}, pid {self.pid}, since {when}"


class Lease(abc.ABC):
    """A store's lease; :meth:`try_acquire` then, while held, :meth:`valid` at every tick."""

    term: int = 0
    description: str

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.since: float | None = None

    @abc.abstractmethod
    def try_acquire(self) -> Holder | None:
        """Take the lease and bump its term: None when taken, else the current holder."""

    @abc.abstractmethod
    def valid(self) -> bool:
        """Whether this process may still act on the store (cheap: called every tick)."""

    def start_keeping(self) -> None:  # noqa: B027 - only leases that expire need keeping
        """Start renewing the lease in the background, where it needs renewing."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give the lease up (a standby may take it at once); harmless when not held."""

    def status(self) -> dict[str, Any]:
        return {
            "term": self.term,
            "holder": Holder(self.host, self.pid, self.since, self.instance).describe(),
            "valid": self.valid(),
        }


def acquire(lease: Lease, *, standby: bool, poll_s: float = STANDBY_POLL_S) -> int:
    """Take ``lease`` and return its term; without ``standby``, refuse if another holds it.

    :raises LeaseHeld: the lease is held and ``standby`` is false.
    """
    waiting_since: float | None = None
    while True:
        holder = lease.try_acquire()
        if holder is None:
            if waiting_since is not None:
                log.warning(
                    "took over %s after standing by for %.2f s (term %d)",
                    lease.description,
                    time.monotonic() - waiting_since,
                    lease.term,
                    extra={"event": "lease_taken_over", "term": lease.term},
                )
            else:
                log.info(
                    "holding %s (term %d)",
                    lease.description,
                    lease.term,
                    extra={"event": "lease_acquired", "term": lease.term},
                )
            return lease.term
        if not standby:
            raise LeaseHeld(
                f"{lease.description} is held by another supervisor ({holder.describe()}); "
                "stop it first, or start this one with --standby to take over when it stops"
            )
        if waiting_since is None:
            waiting_since = time.monotonic()
            log.warning(
                "standing by: %s is held by another supervisor (%s); taking over when it frees",
                lease.description,
                holder.describe(),
                extra={"event": "lease_standby", "holder_pid": holder.pid},
            )
        time.sleep(poll_s)


# ---------------------------------------------------------------------------------------------
# SQLite: flock on a file beside the database.


class SqliteLease(Lease):
    def __init__(self, database: Path, *, instance: str) -> None:
        super().__init__(instance)
        self.database = database
        self.path = database.with_name(database.name + ".lease")
        self.description = f"the store lease {self.path}"
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    def try_acquire(self) -> Holder | None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            return holder
        except BaseException:
            os.close(fd)
            raise
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != _identity(self.path):  # replaced while we locked it
            os.close(fd)
            return Holder("?", 0, None)
        self.since = time.time()
        try:
            self.term = self._bump_term()
        except sqlite3.Error as exc:
            os.close(fd)
            raise StartupError(f"{self.description}: cannot record the new term: {exc}") from exc
        payload = json.dumps(
            {"host": self.host, "pid": self.pid, "since": self.since, "instance": self.instance}
        ).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, payload, 0)
        self._fd, self._identity = fd, (info.st_dev, info.st_ino)
        return None

    def _bump_term(self) -> int:
        conn = sqlite3.connect(self.database, timeout=30.0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO supervisor_lease (name, term) VALUES (?, 0) ON CONFLICT DO NOTHING",
                (LEASE_NAME,),
            )
            row = conn.execute(
                "UPDATE supervisor_lease SET term = term + 1, holder_host = ?, holder_pid = ?, "
                "holder_instance = ?, started_at = ? WHERE name = ? RETURNING term",
                (self.host, self.pid, self.instance, _iso(self.since), LEASE_NAME),
            ).fetchone()
            conn.execute("COMMIT")
            return int(row[0])
        finally:
            conn.close()

    def valid(self) -> bool:
        if self._fd is None:
            return False
        try:
            return _identity(self.path) == self._identity
        except OSError:
            return False  # removed: another process may lock a new file there

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # drops the flock


def _identity(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return (info.st_dev, info.st_ino)


def _read_holder(fd: int) -> Holder:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return Holder(
            str(data["host"]), int(data["pid"]), data.get("since"), data.get("instance", "")
        )
    except (OSError, ValueError, KeyError, TypeError):
        return Holder("?", 0, None)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


# ---------------------------------------------------------------------------------------------
# PostgreSQL: a lease row on the database's clock, plus an advisory lock as the fast path.

_TAKE = """
UPDATE supervisor_lease
   SET term = term + 1, holder_host = %(host)s, holder_pid = %(pid)s,
       holder_instance = %(instance)s, started_at = now(),
       expires_at = now() + make_interval(secs => %(ttl)s)
 WHERE name = %(name)s
   AND (expires_at IS NULL OR expires_at <= now() OR holder_instance = %(instance)s)
RETURNING term, extract(epoch FROM started_at)
"""
_RENEW = """
UPDATE supervisor_lease SET expires_at = now() + make_interval(secs => %(ttl)s)
 WHERE name = %(name)s AND term = %(term)s AND holder_instance = %(instance)s
"""
_HOLDER = """
SELECT holder_host, holder_pid, extract(epoch FROM started_at), holder_instance
  FROM supervisor_lease WHERE name = %(name)s
"""


class PostgresLease(Lease):
    def __init__(self, url: str, *, description: str, instance: str, ttl_s: float) -> None:
        super().__init__(instance)
        self.url = url
        self.description = f"the store lease of {description}"
        self.ttl_s = ttl_s
        self._conn: Any = None
        self._trusted_until = 0.0  # monotonic
        self._lost = False
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None
        self._lock = threading.Lock()

    def _params(self, **more: Any) -> dict[str, Any]:
        return {
            "name": LEASE_NAME,
            "host": self.host,
            "pid": self.pid,
            "instance": self.instance,
            "ttl": self.ttl_s,
            "term": self.term,
            **more,
        }

    def _connect(self) -> Any:
        import psycopg  # only where PostgreSQL is used

        # keepalives: a dead server or path is noticed in seconds, not hours
        return psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=max(2, int(self.ttl_s / 4)),
            keepalives=1,
            keepalives_idle=max(1, int(self.ttl_s / 4)),
            keepalives_interval=1,
            keepalives_count=3,
            application_name="actor-supervisor lease",
        )

    def try_acquire(self) -> Holder | None:
        import psycopg

        started: float | None = time.monotonic()
        try:
            conn = self._conn if self._conn is not None else self._connect()
            self._conn = conn
            got = conn.execute(
                "SELECT pg_try_advisory_lock(%s, 0)", (LEASE_LOCK_CLASS,)
            ).fetchone()[0]
            if not got:
                return self._holder(conn)
            conn.execute(
                "INSERT INTO supervisor_lease (name, term) VALUES (%s, 0) ON CONFLICT DO NOTHING",
                (LEASE_NAME,),
            )
            # The lock is free, so the last holder's session is gone; but until its row expires
            # it may still believe it holds the lease. Holding the lock, we wait out its ttl: it
            # cannot take the lock again to renew, so it stops acting before the row expires.
            deadline = time.monotonic() + self.ttl_s + 5.0
            while (row := conn.execute(_TAKE, self._params()).fetchone()) is None:
                if time.monotonic() > deadline:
                    conn.execute("SELECT pg_advisory_unlock(%s, 0)", (LEASE_LOCK_CLASS,))
                    return self._holder(conn)
                if started is not None:
                    log.warning(
                        "%s: the last holder (%s) is gone but its lease has not expired; "
                        "waiting up to %.1f s for it",
                        self.description, self._holder(conn).describe(), self.ttl_s,
                        extra={"event": "lease_expiry_wait"},
                    )  # fmt: skip
                    started = None
                time.sleep(0.2)
            started = time.monotonic()
        except psycopg.Error as exc:
            self._close_conn()
            raise StartupError(f"{self.description}: cannot take the lease: {exc}") from exc
        self.term, self.since = int(row[0]), float(row[1])
        self._trusted_until = started + self.ttl_s * TRUST  # from before the row was updated
        return None

    def _holder(self, conn: Any) -> Holder:
        row = conn.execute(_HOLDER, self._params()).fetchone()
        if row is None:
            return Holder("?", 0, None)
        host, pid, since, instance = row
        return Holder(
            host or "?", pid or 0, float(since) if since is not None else None, instance or ""
        )

    def valid(self) -> bool:
        with self._lock:
            return not self._lost and time.monotonic() < self._trusted_until

    def start_keeping(self) -> None:
        self._keeper = threading.Thread(target=self._keep, name="store-lease", daemon=True)
        self._keeper.start()

    def _keep(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            started = time.monotonic()
            try:
                renewed = self._renew()
            except Exception as exc:  # any failure: reconnect at the next round, trust runs out
                self._close_conn()
                log.warning(
                    "%s: renewal failed (%s); trusted for %.1f s more",
                    self.description,
                    exc,
                    max(0.0, self._trusted_until - time.monotonic()),
                    extra={"event": "lease_renewal_failed"},
                )
                continue
            with self._lock:
                if renewed:
                    self._trusted_until = started + self.ttl_s * TRUST
                else:
                    self._lost = True
            if not renewed:
                log.error(
                    "%s: lost (another supervisor took it); this one stops acting",
                    self.description,
                    extra={"event": "lease_lost", "term": self.term},
                )
                return

    def _renew(self) -> bool:
        if self._conn is None:  # the lock connection died: a new one, and the lock again
            self._conn = self._connect()
            got = self._conn.execute(
                "SELECT pg_try_advisory_lock(%s, 0)", (LEASE_LOCK_CLASS,)
            ).fetchone()[0]
            if not got:
                return False
            log.warning(
                "%s: lock connection re-established", self.description,
                extra={"event": "lease_reconnected"},
            )  # fmt: skip
        cur = self._conn.execute(_RENEW, self._params())
        return bool(cur.rowcount == 1)

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def release(self) -> None:
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join(timeout=5.0)
        if self._conn is not None and self.term and not self._lost:
            with contextlib.suppress(Exception):
                self._conn.execute(
                    "UPDATE supervisor_lease SET expires_at = now() "
                    "WHERE name = %(name)s AND term = %(term)s AND holder_instance = %(instance)s",
                    self._params(),
                )
        self._close_conn()  # closing the session drops the advisory lock


def open_lease(store: Any, url: str, *, instance: str, ttl_s: float) -> Lease:
    """The lease that fits ``store`` (opened from ``url``)."""
    from supervisor.store.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        return SqliteLease(store.path, instance=instance)
    return PostgresLease(url, description=store.description, instance=instance, ttl_s=ttl_s)
