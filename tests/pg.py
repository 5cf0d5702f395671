"""A real PostgreSQL server for the tests: one migrated template, one fresh database per test.

The server is ``ACTOR_SUPERVISOR_TEST_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/
test``); its user must be allowed to create databases. Once per session a template database is
created and migrated; each test gets ``CREATE DATABASE ... TEMPLATE ...`` (a file copy, fast)
and drops it afterwards (Procrastinate's ``setup_db``/``db_factory``). When no server answers,
PostgreSQL tests are skipped with the reason -- unless ``ACTOR_SUPERVISOR_REQUIRE_POSTGRES`` is
set (CI), where that is a failure.
"""

import atexit
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
_template: str | None = None
_unreachable: str | None = None


def server_dsn() -> str:
    return os.environ.get("ACTOR_SUPERVISOR_TEST_DSN") or DEFAULT_DSN


def database_url(name: str, *, port: int | None = None, password: str | None = None) -> str:
    """A ``postgresql://`` URL for database ``name`` on the test server (or another port)."""
    params = conninfo_to_dict(server_dsn())
    user = params.get("user", "postgres")
    host = params.get("host", "127.0.0.1")
    secret = f":{password}" if password else ""
    return f"postgresql://{user}{secret}@{host}:{port or params.get('port', 5432)}/{name}"


def server_port() -> int:
    return int(str(conninfo_to_dict(server_dsn()).get("port", 5432)))


@contextmanager
def admin() -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    conn = psycopg.connect(make_conninfo(server_dsn(), connect_timeout=3), autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


def require_server() -> None:
    """Skip (or, in CI, fail) the calling test when the server does not answer."""
    global _unreachable
    if _unreachable is None:
        try:
            with admin() as conn:
                conn.execute("SELECT 1")
            _unreachable = ""
        except psycopg.Error as exc:
            _unreachable = f"no PostgreSQL server at {server_dsn()}: {str(exc).strip()}"
    if _unreachable:
        if os.environ.get("ACTOR_SUPERVISOR_REQUIRE_POSTGRES"):
            pytest.fail(f"{_unreachable} (ACTOR_SUPERVISOR_REQUIRE_POSTGRES is set)")
        pytest.skip(f"{_unreachable}; set ACTOR_SUPERVISOR_TEST_DSN to run PostgreSQL tests")


def _new_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


def template() -> str:
    """The session's migrated template database (created on first use)."""
    global _template
    if _template is None:
        from supervisor.store.postgres import PostgresStore

        name = _new_name("as_tpl")
        create_database(name)
        store = PostgresStore(database_url(name))
        try:
            store.migrate()
        finally:
            store.close()
        _template = name
        atexit.register(drop_template)  # once per session, whichever test made it
    return _template


def create_database(name: str, *, template: str | None = None) -> None:
    with admin() as conn:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(statement)


def drop_database(name: str) -> None:
    with admin() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextmanager
def fresh_database(*, migrated: bool = True) -> Iterator[str]:
    """A new database (a copy of the migrated template, or empty); dropped afterwards."""
    require_server()
    name = _new_name("as_test")
    create_database(name, template=template() if migrated else None)
    try:
        yield name
    finally:
        drop_database(name)


def drop_template() -> None:
    global _template
    if _template is not None:
        drop_database(_template)
        _template = None
