"""Store faults never lose an acknowledged run silently and never wedge (issue 9).

The SQLite file deleted under a running supervisor is noticed before the next batch (the store
turns degraded and spools); a record the store refuses for good goes to the dead-letter file
while the records behind it are written; a start-up never refuses because of one bad spooled
record.
"""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from protocol.client import RunOutcome
from supervisor.deadletter import DeadLetters
from supervisor.spool import Spool, frame
from supervisor.store.sqlite import SqliteStore
from supervisor.writer import BatchWriter
from tests.helpers import event, run_record, wait_for
from tests.supervisor.harness import ECHO, RunningSupervisor, write_script

Start = Callable[..., RunningSupervisor]
ACTORS = """
[[actors]]
name = "echo"
script = "scripts/echo.py"
"""


def letters(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_a_poison_record_is_dead_lettered_and_the_writer_goes_on(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    store.migrate()
    dead = DeadLetters(tmp_path / "dead.jsonl")
    spool = Spool(tmp_path / "spool", dead_letters=dead)
    writer = BatchWriter(store, spool=spool, dead_letters=dead, max_age_s=0.0)
    writer.start()
    try:
        writer.put(run_record("good-1"))
        writer.put(run_record("poison", queued_at=1e300))  # cannot be a timestamp: refused for good
        writer.put(event("e1"))
        assert writer.flush(timeout=10)
        writer.put(run_record("good-2"))
        assert writer.flush(timeout=10)
        stats = writer.stats()
    finally:
        assert writer.close(timeout=10)
    assert {r.run_id for r in store.list_runs()} == {"good-1", "good-2"}
    assert [e.event_id for e in store.list_events()] == ["e1"]
    assert (stats.dead_letters, stats.spool_depth, stats.degraded) == (1, 0, False)
    (letter,) = letters(tmp_path / "dead.jsonl")
    assert letter["type"] == "RunRecord" and letter["record"]["run_id"] == "poison"
    assert "cannot be encoded" in letter["reason"]
    store.close()


def test_start_up_replays_a_spool_holding_a_poison_record(
    public_tmp: Path, supervisors: Start
) -> None:
    write_script(public_tmp, "echo.py", ECHO)
    spool = public_tmp / "state" / "spool"
    spool.mkdir(parents=True)
    items = [
        ["run", orjson.loads(orjson.dumps(r))]
        for r in (run_record("ok"), run_record("bad", queued_at=1e300))
    ]
    items.append(["run", {"run_id": "mangled"}])  # does not even decode
    payload = orjson.dumps(items)
    (spool / "000000000001.spool").write_bytes(frame(payload, len(items)))
    sup = supervisors(ACTORS)
    store = sup.store()
    try:
        assert [r.run_id for r in store.list_runs(run_id="ok")] == ["ok"]
    finally:
        store.close()
    status = sup.status()["store"]
    assert status["dead_letters"] == 2 and status["spool_depth"] == 0
    reasons = [letter["reason"] for letter in letters(Path(status["dead_letter_file"]))]
    assert any("cannot be encoded" in r for r in reasons) and any("decode" in r for r in reasons)
    assert sup.stop() == 0


@pytest.mark.timeout(120)
def test_the_sqlite_file_deleted_while_running_is_noticed_and_nothing_acknowledged_is_lost(
    public_tmp: Path, supervisors: Start
) -> None:
    write_script(public_tmp, "echo.py", ECHO)
    sup = supervisors(ACTORS)
    database = public_tmp / "state" / "actor-supervisor.db"
    with sup.client() as client:
        assert isinstance(client.submit("echo", {"n": "before"}, wait=True), RunOutcome)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        after = []
        for n in range(3):
            outcome = client.submit("echo", {"n": n}, wait=True)
            assert isinstance(outcome, RunOutcome) and outcome.succeeded
            after.append(outcome.run_id)
    store = wait_for(lambda: sup.status()["store"], 10, "status")
    assert store["degraded"] is True and store["spool_depth"] > 0, store
    assert "database file was removed" in sup.log()
    assert sup.stop() == 0
    again = supervisors(config=sup.config_path, endpoint=sup.endpoint)
    reopened = again.store()
    try:
        found = {r.run_id: r.status for r in reopened.list_runs(limit=1000)}
    finally:
        reopened.close()
    assert all(found.get(run_id) == "succeeded" for run_id in after), found
    assert os.path.exists(database)
    assert again.stop() == 0
