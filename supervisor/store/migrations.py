"""Numbered SQL migrations: finding the files, and applying them to SQLite or PostgreSQL.

Files are ``sql/<backend>/NNNN_name.sql``. Each is applied in its own transaction together with
its ``schema_migrations`` row, so a crash mid-way leaves either the whole migration or none of
it. Processes migrating at once serialize on a lock (SQLite's write lock, a PostgreSQL
advisory lock) and re-read the applied set under it, so each migration runs exactly once.
Installed, ``sql/`` is the package ``supervisor.sql``; in a source checkout (where the editable
finder cannot import a folder without ``__init__.py``) it is the repository's ``sql/``.
"""

import importlib.resources
import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.store.base import SchemaTooNew, StoreError

if TYPE_CHECKING:  # psycopg is imported by the PostgreSQL store only, where it is needed
    import psycopg

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<label>[a-z0-9_]+)\.sql$")
_REPO_SQL = Path(__file__).resolve().parents[2] / "sql"
# pg_advisory_xact_lock key of "migrating actor-supervisor" ("actorsup" in ASCII): any two
# processes migrating one database, from any host, take turns on it.
MIGRATION_LOCK_KEY = 0x6163746F72737570


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: ``version`` 1 for ``0001_initial.sql``, ``name`` ``0001_initial``."""

    version: int
    name: str
    sql: str


def sql_root() -> Traversable:
    """The folder holding ``sqlite/`` and ``postgres/``: the installed package, else the repo."""
    try:
        root = importlib.resources.files("supervisor.sql")
    except (ImportError, OSError):
        # ImportError: a source checkout, where sql/ is no package. NotADirectoryError: the
        # setuptools editable finder adds a placeholder path entry to the namespace package.
        return _REPO_SQL
    return root if root.is_dir() else _REPO_SQL


def load_migrations(backend: str, root: Traversable | None = None) -> list[Migration]:
    """The migrations of ``backend`` in version order.

    :raises StoreError: no migration files, a ``.sql`` file with a malformed name, or two files
        with the same version (a packaging mistake that must not reach a database).
    """
    folder = (root if root is not None else sql_root()).joinpath(backend)
    if not folder.is_dir():
        raise StoreError(f"no migrations folder for backend {backend!r} at {folder}")
    migrations = parse_migrations(
        (entry.name, entry.read_text("utf-8")) for entry in folder.iterdir()
    )
    if not migrations:
        raise StoreError(f"no migration files in {folder}")
    return migrations


def parse_migrations(files: Iterable[tuple[str, str]]) -> list[Migration]:
    """``(file name, text)`` pairs to sorted migrations; names not ending ``.sql`` are skipped."""
    by_version: dict[int, Migration] = {}
    for file_name, text in files:
        if not file_name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(file_name)
        if match is None:
            raise StoreError(f"migration file {file_name!r} is not named NNNN_name.sql")
        version = int(match["version"])
        if version in by_version:
            raise StoreError(
                f"migration version {version} is used twice: "
                f"{by_version[version].name}.sql and {file_name}"
            )
        by_version[version] = Migration(version=version, name=file_name[:-4], sql=text)
    return [by_version[v] for v in sorted(by_version)]


def split_statements(sql: str) -> list[str]:
    """Split a SQLite script into statements, keeping trigger bodies whole.

    ``executescript`` would do this, but it commits any open transaction first, which would
    break "one migration, one transaction". :raises StoreError: an unterminated statement.
    """
    statements: list[str] = []
    start = 0
    for end, char in enumerate(sql):
        if char == ";" and sqlite3.complete_statement(sql[start : end + 1]):
            statements.append(sql[start : end + 1].strip())
            start = end + 1
    tail = sql[start:]
    if any(line.strip() and not line.strip().startswith("--") for line in tail.splitlines()):
        raise StoreError(f"unterminated SQL statement: {tail.strip()[:80]!r}")
    return statements


def apply_sqlite(
    conn: sqlite3.Connection, migrations: Sequence[Migration], *, now: Callable[[], str]
) -> list[str]:
    """Apply the migrations ``conn``'s database lacks; return the names applied, in order.

    ``conn`` must be in autocommit mode (``isolation_level=None``); ``now`` gives ``applied_at``
    in the store's timestamp format. Each migration takes the write lock with ``BEGIN
    IMMEDIATE`` and re-reads the applied set inside it, so processes migrating at once all
    succeed and each migration runs once. sqlite3 errors propagate; the store translates them.

    :raises SchemaTooNew: the database has a version beyond the files.
    """
    applied: list[str] = []
    for migration in migrations:
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = sqlite_applied_versions(conn)
            _refuse_newer(done, migrations)
            if migration.version in done:
                conn.execute("ROLLBACK")
                continue
            for statement in split_statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, now()),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(migration.name)
    if not applied:
        _refuse_newer(sqlite_applied_versions(conn), migrations)
    return applied


def apply_postgres(conn: "psycopg.Connection[Any]", migrations: Sequence[Migration]) -> list[str]:
    """Apply the migrations ``conn``'s database lacks; return the names applied, in order.

    ``conn`` must have no transaction open. Each migration runs in its own transaction that
    first takes the advisory lock :data:`MIGRATION_LOCK_KEY` (released by the commit) and
    re-reads ``schema_migrations`` under it. psycopg errors propagate; the store translates.

    :raises SchemaTooNew: the database has a version beyond the files.
    """
    applied: list[str] = []
    for migration in migrations:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            done = pg_applied_versions(conn)
            _refuse_newer(done, migrations)
            if migration.version in done:
                continue
            conn.execute(migration.sql.encode())  # no parameters: several statements may run
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, now())",
                (migration.version, migration.name),
            )
        applied.append(migration.name)
    if not applied:
        with conn.transaction():
            _refuse_newer(pg_applied_versions(conn), migrations)
    return applied


def pg_applied_versions(conn: "psycopg.Connection[Any]") -> set[int]:
    """The migration versions applied to a PostgreSQL database (none before 0001 ran)."""
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return set()
    return {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations")}


def sqlite_applied_versions(conn: sqlite3.Connection) -> set[int]:
    """The migration versions applied to a SQLite database (none before 0001 ran)."""
    # schema_migrations is created by 0001, so a fresh database has no such table yet.
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if exists is None:
        return set()
    return {int(row[0]) for row in conn.execute("SELECT version FROM schema_migrations")}


def _refuse_newer(applied: set[int], migrations: Sequence[Migration]) -> None:
    known = max((m.version for m in migrations), default=0)
    newest = max(applied, default=0)
    if newest > known:
        raise SchemaTooNew(
            f"the database is at schema version {newest}, but this actor-supervisor knows "
            f"versions up to {known}; upgrade actor-supervisor before using this database"
        )
