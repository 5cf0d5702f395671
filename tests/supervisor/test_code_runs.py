"""Code versions end to end: real supervisors, real script files edited and deleted under them,
the real CLI, on SQLite and on PostgreSQL. Every run must name the exact code it ran."""

import hashlib
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from protocol.client import ClientError, RunOutcome
from supervisor.records import RunRecord
from supervisor.store import open_store
from supervisor.store.base import Store
from tests import pg
from tests.helpers import wait_for
from tests.supervisor.harness import RunningSupervisor, write_script

Start = Callable[..., RunningSupervisor]

VERSIONED = """\
import json, sys
json.load(sys.stdin)
print(json.dumps({{"version": {version}}}))
"""


def versioned(folder: Path, name: str, version: int) -> Path:
    return write_script(folder, name, VERSIONED.format(version=version))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """The ``database`` setting: the harness's SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield "sqlite:state/actor-supervisor.db"
        return
    with pg.fresh_database() as name:
        yield pg.database_url(name)


def start(supervisors: Start, actors: str, database: str, **options: Any) -> RunningSupervisor:
    return supervisors(actors, settings=f'database = "{database}"\n', **options)


def opened(sup: RunningSupervisor, database: str) -> Store:
    return open_store(database, base_dir=sup.folder)


def runs(sup: RunningSupervisor, database: str, actor: str) -> list[RunRecord]:
    """The actor's final attempts, oldest first."""
    store = opened(sup, database)
    try:
        found = store.list_runs(actor=actor, limit=1000)
    finally:
        store.close()
    return [r for r in reversed(found) if r.is_final]


def output(run: RunRecord) -> Any:
    return orjson.loads(run.output_json or "null")


def submit(sup: RunningSupervisor, actor: str) -> RunOutcome:
    with sup.client() as client:
        outcome = client.submit(actor, {}, wait=True)
    assert isinstance(outcome, RunOutcome)
    return outcome


def cli_ok(sup: RunningSupervisor, database: str, *args: str) -> Any:
    done = sup.cli(*args, "--database", database, "--json")
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


@pytest.mark.timeout(120)
def test_an_edit_between_two_scheduled_runs_is_a_new_version_each_run_names_its_code(
    public_tmp: Path, supervisors: Start, database: str
) -> None:
    script = versioned(public_tmp, "ticker.py", 1)
    first_sha = sha(script)
    sup = start(
        supervisors,
        '[[actors]]\nname = "ticker"\nscript = "scripts/ticker.py"\nsync = "before_run"\n'
        'schedule = { type = "interval", seconds = 0.5 }\n',
        database,
    )
    wait_for(lambda: runs(sup, database, "ticker"), 30, "a first scheduled run")
    # In file mode a run's child reads the file just after its dispatch hashed it: an edit
    # landing between the two runs code no version of the history holds yet (the run's row
    # names its hash, with no history id; see the next test). Edit while no run is on its
    # way, as an operator's deploy would, so that every run names a recorded version.
    assert sup.cli("pause", "ticker").returncode == 0
    wait_for(lambda: sup.status()["queue"]["in_flight"] == 0, 30, "the run in flight to end")
    versioned(public_tmp, "ticker.py", 2)
    assert sup.cli("resume", "ticker").returncode == 0
    wait_for(
        lambda: any(output(r) == {"version": 2} for r in runs(sup, database, "ticker")),
        30,
        "a run of the edited script",
    )
    assert sup.stop() == 0

    done = runs(sup, database, "ticker")
    old = [r for r in done if output(r) == {"version": 1}]
    new = [r for r in done if output(r) == {"version": 2}]
    assert old and new and len(old) + len(new) == len(done)
    assert {r.code_sha256 for r in old} == {first_sha}
    assert {r.code_sha256 for r in new} == {sha(script)}
    store = opened(sup, database)
    try:
        history = store.code_history("ticker")
        events = store.list_events(aggregate_type="actor", aggregate_id="ticker")
        started = store.list_events(aggregate_type="run", aggregate_id=new[0].run_id)
    finally:
        store.close()
    assert [(v.version_tag, v.change_type, v.is_active) for v in history] == [
        ("1.0.1", "auto_sync", True), ("1.0.0", "initial", False),
    ]  # fmt: skip
    assert [v.script_code_hash for v in history] == [sha(script), first_sha]
    assert {r.code_history_id for r in old} == {history[1].history_id}
    assert {r.code_history_id for r in new} == {history[0].history_id}
    assert {r.code_source for r in done} == {"file"}
    kinds = [e.event_type for e in events]
    assert kinds.index("code_drift_detected") < kinds.index("code_auto_synced")
    meta = next(e.metadata for e in started if e.event_type == "run_started")
    assert (meta["code_sha256"], meta["code_history_id"], meta["code_source"]) == (
        sha(script), history[0].history_id, "file",
    )  # fmt: skip


@pytest.mark.timeout(120)
def test_edits_racing_runs_leave_every_run_naming_the_code_it_ran(
    public_tmp: Path, supervisors: Start
) -> None:
    """The script is replaced 40 times while a 20 ms interval actor runs it, with no pause: an
    edit can land after the supervisor hashed the file for a run and before the run's child
    opens it. Each run's row must still name what it ran: the hash of the version it printed
    (its child says when that is not the version it was sent with)."""
    script = versioned(public_tmp, "racer.py", 0)
    contents = {0: script.read_bytes()}
    sup = start(
        supervisors,
        '[[actors]]\nname = "racer"\nscript = "scripts/racer.py"\nsync = "before_run"\n'
        'schedule = { type = "interval", seconds = 0.02 }\n',
        "sqlite:state/actor-supervisor.db",
    )
    for version in range(1, 41):
        staged = script.with_name("racer.py.new")
        staged.write_text(VERSIONED.format(version=version))
        staged.chmod(0o644)
        contents[version] = staged.read_bytes()
        staged.replace(script)  # atomic: a run reads one version or the next, never half
        count = len(runs(sup, "sqlite:state/actor-supervisor.db", "racer"))
        wait_for(
            lambda c=count: len(runs(sup, "sqlite:state/actor-supervisor.db", "racer")) > c,
            30,
            "another run",
        )
    assert sup.stop() == 0
    done = [
        r for r in runs(sup, "sqlite:state/actor-supervisor.db", "racer") if r.status == "succeeded"
    ]
    assert len(done) >= 40
    for run in done:
        ran = hashlib.sha256(contents[output(run)["version"]]).hexdigest()
        assert run.code_sha256 == ran, (run.run_id, output(run), run.code_sha256)


@pytest.mark.timeout(120)
def test_a_deleted_script_never_stops_the_supervisor(
    public_tmp: Path, supervisors: Start, database: str
) -> None:
    stored = versioned(public_tmp, "stored.py", 1)
    plain = versioned(public_tmp, "plain.py", 1)
    actors = (
        '[[actors]]\nname = "stored"\nscript = "scripts/stored.py"\nexec_mode = "database"\n'
        '[[actors]]\nname = "plain"\nscript = "scripts/plain.py"\n'
    )
    sup = start(supervisors, actors, database)
    assert submit(sup, "stored").succeeded and submit(sup, "plain").succeeded
    stored_sha = sha(stored)
    stored.unlink()
    plain.unlink()

    from_db = submit(sup, "stored")
    assert from_db.succeeded and from_db.output == {"version": 1}
    assert (from_db.code_sha256, from_db.code_source) == (stored_sha, "database")
    missing = submit(sup, "plain")
    assert (missing.status, missing.reason) == ("failed_permanent", "file_missing")
    assert "does not exist" in (missing.error or "")
    assert missing.attempts == 1  # never retried
    assert sup.status()["supervisor"]["phase"] == "running"
    assert sup.stop() == 0

    again = start(supervisors, actors, database)  # and a start with the files gone works too
    assert submit(again, "stored").output == {"version": 1}
    assert submit(again, "plain").reason == "file_missing"
    codes = {a["name"]: a["code_status"] for a in again.status()["actors"]}
    assert codes == {"stored": "file_missing", "plain": "file_missing"}
    assert again.stop() == 0
    assert (
        "script file" in again.log()
        and "is missing (or its runs may not read it); its runs use the stored code" in again.log()
    )
    store = opened(again, database)
    try:
        states = store.load_code_states()
        missing_events = [
            e
            for e in store.list_events(aggregate_type="actor")
            if e.event_type == "code_file_missing"
        ]
    finally:
        store.close()
    assert {s.script_sync_status for s in states.values()} == {"file_missing"}
    assert sorted(e.aggregate_id for e in missing_events) == ["plain", "stored"]  # once each


@pytest.mark.timeout(150)
def test_deploy_and_rollback_reach_a_running_supervisor_and_survive_a_restart(
    public_tmp: Path, supervisors: Start, database: str
) -> None:
    script = versioned(public_tmp, "greeter.py", 1)
    actors = '[[actors]]\nname = "greeter"\nscript = "scripts/greeter.py"\nexec_mode = "database"\n'
    sup = start(supervisors, actors, database)
    assert submit(sup, "greeter").output == {"version": 1}

    versioned(public_tmp, "greeter.py", 2)
    assert submit(sup, "greeter").output == {"version": 1}  # database mode: 1.0.0 stays active
    deployed = cli_ok(sup, database, "deploy", "greeter", "--changelog", "v2")
    assert deployed["version"] == "1.0.1"
    assert deployed["supervisor"].startswith("the running supervisor uses it now")
    on_v2 = submit(sup, "greeter")
    assert on_v2.output == {"version": 2} and on_v2.code_history_id == deployed["history_id"]

    back = cli_ok(sup, database, "rollback", "greeter", "--to-version", "1.0.0")
    assert back["version"] == "1.0.2" and back["supervisor"].startswith("the running supervisor")
    on_v1 = submit(sup, "greeter")
    assert on_v1.output == {"version": 1}
    assert (on_v1.code_history_id, on_v1.code_source) == (back["history_id"], "database")
    with sup.client() as client, pytest.raises(ClientError, match="unknown_actor"):
        client.refresh("nobody")
    (status,) = sup.status()["actors"]
    assert (status["code_status"], status["code_history_id"]) == (
        "drift_detected",
        back["history_id"],
    )
    assert sup.stop() == 0

    again = start(supervisors, actors, database)  # the file still holds v2: no auto_sync
    assert submit(again, "greeter").output == {"version": 1}
    versions = cli_ok(again, database, "versions", "greeter")
    assert [(v["version_tag"], v["change_type"]) for v in versions] == [
        ("1.0.2", "rollback"), ("1.0.1", "manual_deploy"), ("1.0.0", "initial"),
    ]  # fmt: skip
    assert script.read_text() == VERSIONED.format(version=2)


HELPED = """\
import json, sys
import helper
json.load(sys.stdin)
print(json.dumps({"greeting": helper.greet("Ada"), "file": __file__}))
"""


@pytest.mark.timeout(120)
def test_database_mode_scripts_import_helpers_from_their_own_folder(
    public_tmp: Path, supervisors: Start
) -> None:
    database = "sqlite:state/actor-supervisor.db"
    write_script(public_tmp, "pkg/helper.py", "def greet(name):\n    return f'hello {name}'\n")
    write_script(public_tmp, "pkg/main.py", HELPED)
    actors = "".join(
        f'[[actors]]\nname = "{mode}"\nscript = "scripts/pkg/main.py"\nexec_mode = "database"\n'
        f'mode = "{mode}"\n'
        for mode in ("fork", "exec")
    )
    sup = start(supervisors, actors, database)
    for mode in ("fork", "exec"):
        outcome = submit(sup, mode)
        assert outcome.succeeded, outcome
        assert outcome.output["greeting"] == "hello Ada"
        # it ran the materialized copy, in a folder named by its bundle's hash, not the file
        ran = Path(outcome.output["file"])
        assert (ran.parent.name, ran.name) == (outcome.code_sha256, "main.py")
        assert outcome.code_source == "database"

    # an actor added by a reload loads its code off the loop; its first run waits for it
    sup.config_path.write_text(
        sup.config_path.read_text()
        + '[[actors]]\nname = "late"\nscript = "scripts/pkg/main.py"\nexec_mode = "auto"\n'
        'schedule = { type = "immediate" }\n'
    )
    sup.proc.send_signal(signal.SIGHUP)
    late = wait_for(lambda: runs(sup, database, "late"), 30, "the reloaded actor's run")
    assert late[0].status == "succeeded" and late[0].code_source == "database"
    assert output(late[0])["greeting"] == "hello Ada"
