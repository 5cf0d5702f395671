"""Which PostgreSQL address the store-openness probe asks, from each way a URL can name it."""

import socket

import pytest

from supervisor.store.openness import address_of, endpoint_of


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://actors@db.example:6543/jobs", ("db.example", 6543, "actors", "jobs")),
        ("postgresql://actors@127.0.0.1/actors", ("127.0.0.1", 5432, "actors", "actors")),
        ("postgresql:///jobs", ("/var/run/postgresql", 5432, "probe", "jobs")),
        ("host=/run/pg port=5433 user=u dbname=d", ("/run/pg", 5433, "u", "d")),
        ("postgresql://u@a.example,b.example/d", None),  # several hosts: not probed
    ],
)
def test_the_address_probed_is_the_one_the_store_connects_to(
    url: str, expected: tuple[str, int, str, str] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PGHOST", "PGPORT", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGUSER", "probe")  # libpq's default user, else our own name
    assert address_of(url) == expected


def test_libpq_environment_defaults_fill_what_the_url_leaves_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGHOST", "db.example")
    monkeypatch.setenv("PGPORT", "6000")
    monkeypatch.setenv("PGUSER", "ops")
    monkeypatch.setenv("PGDATABASE", "jobs")
    assert address_of("postgresql://") == ("db.example", 6000, "ops", "jobs")


def test_a_socket_folder_is_its_socket_and_a_host_is_resolved_before_the_switch() -> None:
    assert endpoint_of("/run/pg", 5433) == (socket.AF_UNIX, "/run/pg/.s.PGSQL.5433")
    assert endpoint_of("127.0.0.1", 5432) == (socket.AF_INET, ("127.0.0.1", 5432))
    assert endpoint_of("no-such-host.invalid", 5432) is None
