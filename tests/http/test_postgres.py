"""The HTTP process on PostgreSQL: a real supervisor on a fresh database, with HTTP on.

The database URL reaches the supervisor through ``ACTOR_SUPERVISOR_DATABASE`` (never a command
line), and the HTTP process through its stdin. Its store connection is read-only: the server
itself refuses a write on it. Skipped without a PostgreSQL server (a failure in CI).
"""

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from supervisor.http.context import Backend
from supervisor.http.settings import HttpSettings
from supervisor.records import Event
from supervisor.store.base import StoreError
from tests import pg
from tests.http.conftest import start_http, versioned
from tests.supervisor.harness import write_script


@pytest.fixture
def database() -> Iterator[str]:
    with pg.fresh_database() as name:  # migrated: a copy of the session's template
        yield name


@pytest.mark.timeout(120)
def test_http_on_postgres_reads_and_its_connection_cannot_write(
    public_tmp: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = pg.database_url(database)
    monkeypatch.setenv("ACTOR_SUPERVISOR_DATABASE", url)  # the supervisor and its CLI
    running = start_http(public_tmp)
    try:
        http = running.http
        assert running.sup.status()["store"]["database"].startswith("postgresql://")
        health = http.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "healthy", health.text
        done = http.post("/api/v1/actors/echo/runs?wait=30", json={"pg": True}).json()
        assert done["status"] == "succeeded"
        runs = http.get("/api/v1/runs", params={"actor": "echo"}).json()["runs"]
        assert [(r["run_id"], r["attempts"], r["input"]) for r in runs] == [
            (done["run_id"], 1, {"pg": True})
        ]
        actors = {a["name"]: a for a in http.get("/api/v1/actors").json()["actors"]}
        assert actors["echo"]["last_run"]["run_id"] == done["run_id"]
        events = http.get("/api/v1/events", params={"limit": 2}).json()
        assert events["events"][0]["aggregate_id"] == done["run_id"] and events["next_cursor"]

        # a rollback writes through a short-lived writable store, as the CLI does
        write_script(public_tmp, "dbcode.py", versioned(2))
        assert running.sup.cli("deploy", "dbcode").returncode == 0
        back = http.post("/api/v1/actors/dbcode/rollback", json={"to_version": "1.0.0"})
        assert back.status_code == 200 and back.json()["refreshed"], back.text
        again = http.post("/api/v1/actors/dbcode/runs?wait=30", json={}).json()
        assert again["output"] == {"version": 1}

        # the HTTP process's own store connection, as it opens it (Backend.store)
        (public_tmp / "backend-token").write_text("t" * 32)
        backend = Backend(
            HttpSettings(listen="127.0.0.1:0", token_file=str(public_tmp / "backend-token"),
                         control="ipc:///nonexistent",
                         curve_server_key=None, curve_client_key=None, database=url,
                         base_dir=str(public_tmp))
        )  # fmt: skip
        store = backend.store()
        try:
            assert store.find_runs(actor="echo", limit=5)[0].run_id == done["run_id"]
            event = Event(event_id="http-write", event_type="x", aggregate_type="test",
                          aggregate_id="x", created_at=0.0)  # fmt: skip
            with pytest.raises(StoreError, match="read-only transaction"):
                store.write_batch([event])
        finally:
            store.close()
        with psycopg.connect(url) as conn:
            found = conn.execute(
                "SELECT count(*) FROM execution_events WHERE event_id = 'http-write'"
            ).fetchone()
        assert found == (0,)
    finally:
        running.http.close()
        running.sup.stop()
