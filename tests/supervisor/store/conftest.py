"""Store fixtures: one ``store`` fixture parametrized by backend, so the contract suite runs on
every backend unchanged.

SQLite gets a file in ``tmp_path``; PostgreSQL gets a fresh copy of the session's migrated
template database (see ``tests/pg.py``), and is skipped with the reason when no server answers
(a failure in CI). Every store is checked at the end for connections still checked out.
"""

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from supervisor.store.base import Store
from supervisor.store.sqlite import SqliteStore
from tests import pg


def _sqlite_store(stack: ExitStack, tmp_path: Path) -> Store:
    return SqliteStore(tmp_path / "store.db")


def _postgres_store(stack: ExitStack, tmp_path: Path) -> Store:
    from supervisor.store.postgres import PostgresStore

    name = stack.enter_context(pg.fresh_database())  # a copy of the migrated template
    return PostgresStore(pg.database_url(name))


_FACTORIES: dict[str, Callable[[ExitStack, Path], Store]] = {
    "sqlite": _sqlite_store,
    "postgres": _postgres_store,
}


@pytest.fixture(params=sorted(_FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, migrated store on a real database, closed after the test."""
    with ExitStack() as stack:
        backend = _FACTORIES[request.param](stack, tmp_path)
        try:
            backend.migrate()
            yield backend
            assert backend.connections_in_use() == 0
        finally:
            backend.close()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """The name of a fresh database copied from the migrated template."""
    with pg.fresh_database() as name:
        yield name


@pytest.fixture
def pg_empty_database() -> Iterator[str]:
    """The name of a fresh, empty database (no migrations applied)."""
    with pg.fresh_database(migrated=False) as name:
        yield name
