"""The store factory: turn a configured URL into a ``Store``.

Backends are chosen by URL scheme in one table (``_OPENERS``). ``open_store`` does not
migrate: ``start`` and ``migrate`` call ``Store.migrate()``; read-only commands such as
``history`` do not. ``pool_options`` turns the ``[supervisor]`` settings into the PostgreSQL
pool's options; the CLI's defaults (no waiting for a server that is down) need no settings.
"""

from collections.abc import Callable
from pathlib import Path

from supervisor.errors import ConfigError
from supervisor.settings import SupervisorSettings
from supervisor.store.base import SchemaTooNew, Store, StoreError, StoreUnavailable
from supervisor.store.options import PoolOptions
from supervisor.store.sqlite import SYNCHRONOUS_MODES, SqliteStore
from supervisor.store.urls import StoreUrl, parse_store_url, redact_url

__all__ = [
    "PoolOptions",
    "SchemaTooNew",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "open_store",
    "pool_options",
    "redact_url",
]


def open_store(
    url: str,
    *,
    base_dir: Path,
    sqlite_synchronous: str = "normal",
    pool: PoolOptions | None = None,
    read_only: bool = False,
) -> Store:
    """Open the store ``url`` names; relative SQLite paths are relative to ``base_dir``.

    ``pool`` configures a PostgreSQL store (default: :class:`PoolOptions`, one connection
    attempt); SQLite ignores it. ``read_only`` opens a store that cannot write (SQLite
    ``mode=ro``, PostgreSQL read-only transactions).

    :raises ConfigError: unknown scheme, malformed URL, or an invalid ``sqlite_synchronous``.
    :raises StoreError: the database could not be opened (``StoreUnavailable`` if transient).
    """
    parsed = parse_store_url(url, base_dir=base_dir)
    opener = _OPENERS.get(parsed.scheme)
    if opener is None:
        raise ConfigError(
            f"store URL {parsed.description!r}: unknown scheme {parsed.scheme!r}; "
            "expected sqlite:PATH or postgresql://USER@HOST/DB"
        )
    return opener(parsed, sqlite_synchronous, pool or PoolOptions(), read_only)


def pool_options(settings: SupervisorSettings) -> PoolOptions:
    """The PostgreSQL pool as the supervisor is configured: sizes, timeouts, start-up wait."""
    return PoolOptions(
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        connect_timeout_s=settings.pool_connect_timeout_s,
        acquire_timeout_s=settings.pool_acquire_timeout_s,
        check=settings.pool_check,
        wait_s=settings.database_wait_s,
    )


def _open_sqlite(
    parsed: StoreUrl, synchronous: str, pool: PoolOptions, read_only: bool = False
) -> Store:
    if synchronous.lower() not in SYNCHRONOUS_MODES:
        raise ConfigError(
            f"sqlite_synchronous: invalid value {synchronous!r}; "
            f"expected one of {', '.join(sorted(SYNCHRONOUS_MODES))}"
        )
    assert parsed.path is not None  # parse_store_url sets it for every sqlite URL
    return SqliteStore(parsed.path, synchronous=synchronous, read_only=read_only)


def _open_postgres(
    parsed: StoreUrl, synchronous: str, pool: PoolOptions, read_only: bool = False
) -> Store:
    from supervisor.store.postgres import PostgresStore  # psycopg only where it is needed

    return PostgresStore(parsed.url, options=pool, read_only=read_only)


_OPENERS: dict[str, Callable[[StoreUrl, str, PoolOptions, bool], Store]] = {
    "sqlite": _open_sqlite,
    "postgresql": _open_postgres,
    "postgres": _open_postgres,
}
