"""A real supervisor on PostgreSQL, through a TCP proxy we cut: the database goes away for real.

While it is cut the supervisor keeps accepting and running work (batches go to the spool),
``status`` says degraded with the spool depth, and once it is back every accepted run and every
event is in the tables exactly once. A supervisor stopped during the outage leaves its spool
on disk, and the next start replays it before it reads any state. A password in the database
URL shows up nowhere: not in the log, not in ``status``, not in a script's environment.
"""

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from protocol.client import Accepted, ClientError, RunOutcome
from tests import pg
from tests.helpers import wait_for
from tests.proxy import Proxy
from tests.supervisor.harness import ECHO, RunningSupervisor, wait_until_ready, write_script

Start = Callable[..., RunningSupervisor]
SECRET = "hunter2-Secret"
ACTORS = """
[[actors]]
name = "echo"
script = "scripts/echo.py"
timeout_s = 30
"""
# The outage is noticed within a second (acquire timeout) and retried every 0.5 s at most.
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


def url_through(proxy: Proxy, database: str) -> str:
    return pg.database_url(database, port=proxy.port, password=SECRET)


def rows(database: str, query: str) -> list[tuple[Any, ...]]:
    """Read the tables directly, past the proxy."""
    with psycopg.connect(pg.database_url(database)) as conn:
        return conn.execute(query).fetchall()


def check_exactly_once(database: str, run_ids: set[str]) -> None:
    """Each run: one attempt, succeeded, and its three events once each, in order."""
    stored = rows(database, "SELECT run_id, attempt, status FROM runs")
    assert len(stored) == len(run_ids), "a run is missing or stored twice"
    assert {r[0] for r in stored} == run_ids
    assert {(r[1], r[2]) for r in stored} == {(1, "succeeded")}
    events = rows(
        database,
        "SELECT aggregate_id, event_type FROM execution_events "
        "WHERE aggregate_type = 'run' ORDER BY created_at, id",
    )
    by_run: dict[str, list[str]] = {}
    for run_id, event_type in events:
        by_run.setdefault(run_id, []).append(event_type)
    assert set(by_run) == run_ids
    expected = ["run_queued", "run_started", "run_succeeded"]
    wrong = {run_id: types for run_id, types in by_run.items() if types != expected}
    assert not wrong, f"runs whose events are missing, repeated or out of order: {wrong}"


def spool_files(sup: RunningSupervisor) -> list[Path]:
    return sorted((sup.folder / "state" / "spool").glob("*.spool"))


class Submitter(threading.Thread):
    """Submits runs without waiting for them, as fast as the supervisor accepts them."""

    def __init__(self, sup: RunningSupervisor) -> None:
        super().__init__(name="submitter", daemon=True)
        self.sup = sup
        self.accepted: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with self.sup.client(timeout_s=30) as client:
            n = 0
            while not self.stop.is_set():
                try:
                    answer = client.submit("echo", {"n": n})
                except ClientError as exc:
                    self.errors.append(str(exc))
                    continue
                assert isinstance(answer, Accepted)
                self.accepted.append(answer.run_id)
                n += 1
                time.sleep(0.01)


@pytest.mark.timeout(120)
def test_cutting_the_database_mid_burst_loses_and_duplicates_nothing(
    public_tmp: Path, supervisors: Start, database: str, proxy: Proxy
) -> None:
    write_script(public_tmp, "echo.py", ECHO)
    sup = supervisors(ACTORS, settings=SETTINGS + f'database = "{url_through(proxy, database)}"\n')
    submitter = Submitter(sup)
    submitter.start()
    wait_for(lambda: len(submitter.accepted) >= 30, 30, "the first runs before the cut")

    proxy.cut()
    cut_at = len(submitter.accepted)
    degraded = wait_for(
        lambda: (s := sup.status()["store"])["degraded"] and s["spool_depth"] > 0 and s,
        20,
        "status to show the store degraded with a spool depth",
    )
    with sup.client(timeout_s=30) as client:  # scripts keep running during the outage
        during = client.submit("echo", {"during": "the outage"}, wait=True)
    assert isinstance(during, RunOutcome) and during.succeeded, during
    wait_for(lambda: len(submitter.accepted) >= cut_at + 40, 30, "runs accepted during the cut")
    assert rows(database, "SELECT count(*) FROM runs")[0][0] < len(submitter.accepted)

    proxy.restore()
    time.sleep(1.0)  # keep submitting across the recovery
    submitter.stop.set()
    submitter.join(30)
    assert not submitter.errors, submitter.errors
    accepted = {*submitter.accepted, during.run_id}

    def caught_up() -> bool:
        status = sup.status()
        store = status["store"]
        return (
            store["spool_depth"] == 0
            and not store["degraded"]
            and status["queue"]["active_runs"] == 0
        )

    wait_for(caught_up, 60, "the spool to be replayed and every run to finish")
    final = sup.status()
    assert sup.stop() == 0

    check_exactly_once(database, accepted)
    assert degraded["spool_dir"] == str(sup.folder / "state" / "spool")
    assert final["store"]["replayed"] == final["store"]["spooled"] > 0
    assert spool_files(sup) == []
    starts = rows(database, "SELECT count(*) FROM execution_events WHERE event_type LIKE 'sup%'")
    assert starts == [(2,)]  # supervisor_started and supervisor_stopped, once each
    log = sup.log()
    assert "spooling to" in log and "replayed" in log
    assert SECRET not in log
    assert SECRET not in orjson.dumps(degraded).decode()
    assert SECRET not in orjson.dumps(final).decode()


@pytest.mark.timeout(120)
def test_a_restart_with_a_non_empty_spool_replays_it_before_reading_state(
    public_tmp: Path, supervisors: Start, database: str, proxy: Proxy
) -> None:
    write_script(public_tmp, "echo.py", ECHO)
    sup = supervisors(ACTORS, settings=SETTINGS + f'database = "{url_through(proxy, database)}"\n')
    run_ids = set()
    with sup.client(timeout_s=30) as client:
        first = client.submit("echo", {"n": "before"}, wait=True)
        assert isinstance(first, RunOutcome)
        run_ids.add(first.run_id)
        proxy.cut()
        for n in range(10):  # accepted, run and finished while the database is gone
            outcome = client.submit("echo", {"n": n}, wait=True)
            assert isinstance(outcome, RunOutcome) and outcome.succeeded, outcome
            run_ids.add(outcome.run_id)
    assert sup.status()["store"]["spool_depth"] > 0
    assert sup.stop() == 0  # stopped during the outage: the spool stays on disk
    assert spool_files(sup)
    assert rows(database, "SELECT count(*) FROM runs") == [(1,)]

    proxy.restore()
    again = supervisors(config=sup.config_path, endpoint=sup.endpoint)
    assert spool_files(again) == []
    log = again.log()
    assert "spooled records" in log and "before starting" in log
    replayed_at = log.index("before starting")
    assert "supervisor started" in log[replayed_at:]  # the replay came first
    assert again.stop() == 0
    # had the restart read the runs before the replay, it would have found them queued or
    # running and recovered them as a second attempt; there is exactly one of each
    check_exactly_once(database, run_ids)


@pytest.mark.timeout(120)
def test_start_up_waits_for_the_database_then_gives_up_clearly_and_hides_the_password(
    public_tmp: Path, supervisors: Start, database: str, proxy: Proxy
) -> None:
    write_script(public_tmp, "echo.py", ECHO)
    write_script(
        public_tmp,
        "env.py",
        "import json, os, sys\njson.load(sys.stdin)\nprint(json.dumps(dict(os.environ)))\n",
    )
    actors = ACTORS + '\n[[actors]]\nname = "env"\nscript = "scripts/env.py"\n'
    env = {"ACTOR_SUPERVISOR_DATABASE": url_through(proxy, database)}
    proxy.cut()
    doomed = supervisors(
        actors, settings="database_wait_s = 2\npool_connect_timeout_s = 1\n", env=env,
        wait_ready=False,
    )  # fmt: skip
    assert doomed.proc.wait(timeout=30) == 4
    log = doomed.log()
    assert "retrying in" in log and "Connection refused" in log
    assert "gave up after waiting 2 s" in log and ":***@127.0.0.1" in log
    assert SECRET not in log

    config = doomed.config_path.read_text()
    doomed.config_path.write_text(config.replace("database_wait_s = 2", "database_wait_s = 60"))
    doomed.log_path.write_text("")
    started = supervisors(
        config=doomed.config_path, endpoint=doomed.endpoint, env=env, wait_ready=False
    )
    # it waits rather than dying at once; the server comes back while it waits (on that line,
    # not after a fixed delay, which a slow start on a loaded machine could outlast)
    started.wait_for_log("retrying in", 60, "sign of the supervisor waiting for the database")
    proxy.restore()
    wait_until_ready(started, workers=2)
    with started.client() as client:
        outcome = client.submit("env", {}, wait=True)
    assert isinstance(outcome, RunOutcome) and outcome.succeeded, outcome
    script_env = orjson.dumps(outcome.output).decode()
    assert SECRET not in script_env and "ACTOR_SUPERVISOR" not in script_env
    status = started.status()
    assert ":***@" in status["store"]["database"]
    assert SECRET not in orjson.dumps(status).decode()
    assert started.stop() == 0
    assert SECRET not in started.log()
