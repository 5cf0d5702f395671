"""PostgreSQL connections: the pool's options, opening it patiently, and the error boundary.

Modelled on Procrastinate's ``sync_psycopg_connector``: the pool is created with ``open=False``
and ``check=ConnectionPool.check_connection`` (a broken connection is discarded when it is
taken, never handed out), then opened with a timeout. Before that, a direct connection probes
the server, because a failed probe says *why* ("connection refused", "password authentication
failed") where the pool only says it timed out. Every psycopg error crosses into our
``StoreError`` family in :func:`translate`, and every message leaving here has the password
scrubbed: libpq does not echo it, but a future message might.
"""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from supervisor.store.base import StoreError, StoreUnavailable
from supervisor.store.options import PoolOptions
from supervisor.store.urls import REDACTED

log = logging.getLogger(__name__)

# psycopg_pool logs every checkout at INFO ("connection requested", "returning connection"):
# at our default level that would be three lines per flush. Its warnings stay visible.
logging.getLogger("psycopg.pool").setLevel(logging.WARNING)

# SQLSTATE classes that mean "not now" even when psycopg does not raise OperationalError:
# connection exception, insufficient resources, operator intervention (shutdown, cancel),
# system error, transaction rollback (serialization, deadlock). 25006: a read-only
# transaction, as on a standby that has not been promoted yet after a failover.
_UNAVAILABLE_CLASSES = ("08", "40", "53", "57", "58")
_UNAVAILABLE_STATES = frozenset({"25006"})

# TCP keepalives and a user timeout, unless the URL sets its own: a server that vanishes
# without a reset (a dead host, a dropped route) must fail a flush in seconds, not hang it for
# the kernel's default quarter of an hour.
_TCP_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}


class Secret:
    """The URL's password, to scrub from any text before it reaches a log or an exception."""

    def __init__(self, url: str) -> None:
        try:
            password = conninfo_to_dict(url).get("password")
        except psycopg.ProgrammingError:
            password = None
        self._password = str(password) if password else None

    def scrub(self, text: str) -> str:
        if self._password:
            return text.replace(self._password, REDACTED)
        return text


def is_unavailable(exc: BaseException) -> bool:
    """Whether a psycopg error means "retry later" rather than "this will never work"."""
    if isinstance(exc, psycopg.OperationalError):  # includes PoolTimeout and PoolClosed
        return True
    state = getattr(exc, "sqlstate", None) or ""
    return state.startswith(_UNAVAILABLE_CLASSES) or state in _UNAVAILABLE_STATES


@contextmanager
def translate(description: str, action: str, secret: Secret) -> Iterator[None]:
    """psycopg errors to ``StoreUnavailable`` (transient) or ``StoreError`` (all others)."""
    try:
        yield
    except psycopg.Error as exc:
        message = secret.scrub(f"{description}: cannot {action}: {_first_line(exc)}")
        if is_unavailable(exc):
            raise StoreUnavailable(message) from exc
        raise StoreError(message) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def connection_kwargs(url: str, options: PoolOptions) -> dict[str, Any]:
    """libpq parameters we add to the URL's: timeouts, keepalives, our application name."""
    given = conninfo_to_dict(url)
    extra: dict[str, Any] = {k: v for k, v in _TCP_DEFAULTS.items() if k not in given}
    if "connect_timeout" not in given:
        extra["connect_timeout"] = max(1, round(options.connect_timeout_s))
    if "tcp_user_timeout" not in given:
        extra["tcp_user_timeout"] = 30_000  # ms of unacknowledged data before the socket dies
    extra.setdefault("application_name", given.get("application_name", "actor-supervisor"))
    return extra


def probe(url: str, options: PoolOptions, description: str, secret: Secret) -> None:
    """Connect once and disconnect. :raises StoreUnavailable: with libpq's reason."""
    with translate(description, "connect", secret):
        psycopg.connect(url, **connection_kwargs(url, options)).close()


def open_pool(
    url: str,
    options: PoolOptions,
    *,
    description: str,
    secret: Secret,
    configure: Callable[[psycopg.Connection[Any]], None],
    wait_s: float | None = None,
) -> "ConnectionPool[psycopg.Connection[Any]]":
    """A ready pool, after waiting up to ``wait_s`` for the server (None: ``options.wait_s``;
    0: one attempt). Each failed attempt logs one line naming the server (password
    redacted), the reason and the time left.

    :raises StoreUnavailable: the server stayed unreachable until the deadline. A refused
        login or a missing database counts as unreachable too: libpq gives them no SQLSTATE,
        and a database being created during a deployment is worth waiting for.
    :raises StoreError: a URL libpq cannot parse.
    """
    wait_s = options.wait_s if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    delay = 0.25
    while True:
        try:
            probe(url, options, description, secret)
            return _start_pool(url, options, description, secret, configure)
        except StoreUnavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                if wait_s > 0:
                    raise StoreUnavailable(
                        f"{exc} (gave up after waiting {wait_s:g} s for the database)"
                    ) from exc
                raise
            delay = min(delay * 2, 5.0, left)
            log.warning(
                "%s; retrying in %.1f s (giving up in %.0f s)",
                exc,
                delay,
                left,
                extra={"event": "store_waiting", "database": description},
            )
            time.sleep(delay)


def _start_pool(
    url: str,
    options: PoolOptions,
    description: str,
    secret: Secret,
    configure: Callable[[psycopg.Connection[Any]], None],
) -> "ConnectionPool[psycopg.Connection[Any]]":
    pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
        url,
        kwargs=connection_kwargs(url, options),
        min_size=options.min_size,
        max_size=options.max_size,
        open=False,
        configure=configure,
        check=ConnectionPool.check_connection if options.check else None,
        timeout=options.acquire_timeout_s,
        name="actor-supervisor-store",
        # the store rebuilds the pool itself after an outage (see PostgresStore._pool_for);
        # the pool's own reconnect loop only needs to cover short blips
        reconnect_timeout=max(10.0, options.connect_timeout_s * 2),
    )
    try:
        with translate(description, "open the connection pool", secret):
            try:
                pool.open(wait=True, timeout=options.connect_timeout_s)
            except PoolTimeout as exc:  # the probe got through, the pool did not
                raise StoreUnavailable(
                    f"{description}: the connection pool did not fill within "
                    f"{options.connect_timeout_s:g} s"
                ) from exc
    except BaseException:
        pool.close()  # open(wait=True) has closed it on a timeout already; this is harmless
        raise
    return pool
