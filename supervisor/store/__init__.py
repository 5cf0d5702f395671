"""The store factory: turn a configured URL into a ``Store``.

Backends are chosen by URL scheme in one table (``_OPENERS``), so adding PostgreSQL means adding
``supervisor/store/postgres.py`` and one entry here. ``open_store`` does not migrate: ``start``
and ``migrate`` call ``Store.migrate()``; read-only commands such as ``history`` do not.
"""

from collections.abc import Callable
from pathlib import Path

from supervisor.errors import ConfigError
from supervisor.store.base import SchemaTooNew, Store, StoreError, StoreUnavailable
from supervisor.store.sqlite import SYNCHRONOUS_MODES, SqliteStore
from supervisor.store.urls import StoreUrl, parse_store_url, redact_url

__all__ = [
    "SchemaTooNew",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "open_store",
    "redact_url",
]


def open_store(url: str, *, base_dir: Path, sqlite_synchronous: str = "normal") -> Store:
    """Open the store ``url`` names; relative SQLite paths are relative to ``base_dir``.

    :raises ConfigError: unknown scheme, malformed URL, a backend not built yet, or an invalid
        ``sqlite_synchronous``.
    :raises StoreError: the database could not be opened (``StoreUnavailable`` if transient).
    """
    parsed = parse_store_url(url, base_dir=base_dir)
    opener = _OPENERS.get(parsed.scheme)
    if opener is None:
        raise ConfigError(
            f"store URL {parsed.description!r}: unknown scheme {parsed.scheme!r}; "
            "expected sqlite:PATH or postgresql://USER@HOST/DB"
        )
    return opener(parsed, sqlite_synchronous)


def _open_sqlite(parsed: StoreUrl, synchronous: str) -> Store:
    if synchronous.lower() not in SYNCHRONOUS_MODES:
        raise ConfigError(
            f"sqlite_synchronous: invalid value {synchronous!r}; "
            f"expected one of {', '.join(sorted(SYNCHRONOUS_MODES))}"
        )
    assert parsed.path is not None  # parse_store_url sets it for every sqlite URL
    return SqliteStore(parsed.path, synchronous=synchronous)


def _open_postgres(parsed: StoreUrl, synchronous: str) -> Store:
    # The PostgreSQL backend (supervisor/store/postgres.py, PostgresStore) is a later issue; until
    # it lands, refuse clearly instead of silently falling back to SQLite.
    raise ConfigError(
        f"store URL {parsed.description!r}: PostgreSQL support is not built yet; "
        "use a sqlite:PATH URL for now"
    )


_OPENERS: dict[str, Callable[[StoreUrl, str], Store]] = {
    "sqlite": _open_sqlite,
    "postgresql": _open_postgres,
    "postgres": _open_postgres,
}
