"""Alerts on PostgreSQL, end to end: one real supervisor through a TCP proxy we cut.

A final failure reaches a real HTTP receiver signed, and its outbox row says delivered; then
the database goes away for real (``store_degraded``, delivered while it is still away) and comes
back (``store_recovered``): both alerts arrive signed, once, and every outbox row ends up recorded
delivered.
"""

import hashlib
import hmac
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from protocol.client import RunOutcome
from tests import pg
from tests.helpers import wait_for
from tests.proxy import Proxy
from tests.supervisor.harness import ECHO, RunningSupervisor, write_script
from tests.supervisor.receiver import Receiver
from tests.supervisor.test_alerts import FAILING

Start = Callable[..., RunningSupervisor]
SECRET = "pg-alert-secret"
# The outage is noticed within a second (acquire timeout), as in test_outage.
SETTINGS = """
pool_acquire_timeout_s = 1
pool_connect_timeout_s = 1
database_wait_s = 30
batch_max_age_ms = 5
"""


@pytest.fixture
def database() -> Iterator[str]:
    with pg.fresh_database() as name:
        yield name


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    pg.require_server()
    proxy = Proxy(("127.0.0.1", pg.server_port()))
    yield proxy
    proxy.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver().start()
    yield found
    found.stop()


def _outbox(database: str) -> list[tuple[str, str, int]]:
    """(event, status, attempts) of every outbox row, read past the proxy."""
    with psycopg.connect(pg.database_url(database)) as conn:
        rows = conn.execute("SELECT event, status, attempts FROM alert_outbox ORDER BY event")
        return [(str(e), str(s), int(a)) for e, s, a in rows.fetchall()]


def _unreachable(url: str) -> bool:
    """The database, seen through the cut proxy."""
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return True
    return False


@pytest.mark.timeout(180)
def test_alerts_on_postgresql_signed_and_through_a_store_outage(
    public_tmp: Path, supervisors: Start, database: str, proxy: Proxy, receiver: Receiver
) -> None:
    write_script(public_tmp, "failing.py", FAILING)
    write_script(public_tmp, "echo.py", ECHO)
    url = pg.database_url(database, port=proxy.port)
    sup = supervisors(
        f"""
        [[actors]]
        name = "broken"
        script = "scripts/failing.py"
        max_retries = 0

        [[actors]]
        name = "echo"
        script = "scripts/echo.py"

        [[alerts]]
        name = "ops"
        webhook = "{receiver.url}"
        secret = "{SECRET}"
        events = ["run_failed", "store_degraded", "store_recovered"]
        retry_backoff_s = 0.2
        retry_backoff_max_s = 0.5
        """,
        settings=SETTINGS + f'database = "{url}"\n',
    )

    def events() -> list[str]:
        return [r.payload["event"] for r in receiver.requests()]

    with sup.client() as client:
        failed = client.submit("broken", {}, wait=True)
    assert isinstance(failed, RunOutcome) and failed.status == "failed_permanent"
    [got] = wait_for(receiver.requests, 30, "the run_failed alert")
    expected = hmac.new(SECRET.encode(), got.body, hashlib.sha256).hexdigest()
    assert got.headers["X-Actor-Supervisor-Signature"] == f"sha256={expected}"
    assert (got.payload["event"], got.payload["run_id"]) == ("run_failed", failed.run_id)
    wait_for(lambda: _outbox(database) == [("run_failed", "delivered", 1)], 10, "delivered")

    proxy.cut()
    with sup.client() as client:  # a write that fails: the store is degraded
        during = client.submit("echo", {"during": "the outage"}, wait=True)
    assert isinstance(during, RunOutcome) and during.succeeded, during
    # Delivered while the database is still away: the webhook does not need it.
    wait_for(lambda: "store_degraded" in events(), 30, "the store_degraded alert")
    assert _unreachable(url)
    proxy.restore()
    wait_for(lambda: "store_recovered" in events(), 60, "the store_recovered alert")
    assert sorted(events()) == ["run_failed", "store_degraded", "store_recovered"]
    for request in receiver.requests():
        digest = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers["X-Actor-Supervisor-Signature"] == f"sha256={digest}"
    wait_for(
        lambda: [(e, s) for e, s, _ in _outbox(database)]
        == [("run_failed", "delivered"), ("store_degraded", "delivered"),
            ("store_recovered", "delivered")],
        30,
        "every outbox row recorded delivered",
    )  # fmt: skip
    assert sup.stop() == 0
    assert [r.payload["event"] for r in receiver.requests()].count("store_degraded") == 1
