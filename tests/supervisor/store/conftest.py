"""Store fixtures: one ``store`` fixture parametrized by backend, so the contract suite runs on
every backend unchanged.

Adding a backend means adding one factory to ``_FACTORIES`` (PostgreSQL will clone a migrated
template database per test and skip when no server is configured); the tests do not change.
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisor.store.base import Store
from supervisor.store.sqlite import SqliteStore


def _sqlite_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return SqliteStore(tmp_path / "store.db")


_FACTORIES: dict[str, Callable[[pytest.FixtureRequest, Path], Store]] = {
    "sqlite": _sqlite_store,
}


@pytest.fixture(params=sorted(_FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, migrated store on a real database, closed after the test."""
    backend = _FACTORIES[request.param](request, tmp_path)
    try:
        backend.migrate()
        yield backend
    finally:
        backend.close()
