"""One supervisor per store (issue 9): two real supervisors on one store, both backends.

The second refuses, naming the holder; with ``--standby`` it waits and takes over after the
holder is killed with SIGKILL; and whatever happens no ``(actor, scheduled_for)`` runs twice.
"""

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.records import RunRecord
from supervisor.store import open_store
from tests import pg
from tests.helpers import wait_for
from tests.supervisor.harness import (
    RunningSupervisor,
    start_supervisor,
    wait_until_ready,
    write_script,
)

TICKER = """\
    import json, sys, time
    json.load(sys.stdin)
    time.sleep(0.3)
    print(json.dumps({"ok": True}))
"""


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, public_tmp: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:{public_tmp}/shared/store.db"
        return
    with pg.fresh_database() as name:
        yield pg.database_url(name)


def actors(folder: Path) -> str:
    script = write_script(folder, "ticker.py", TICKER)
    return f"""
        [[actors]]
        name = "ticker"
        script = "{script}"
        schedule = {{ type = "interval", seconds = 1 }}
    """


def start(folder: Path, database: str, *args: str, ready: bool = True) -> RunningSupervisor:
    folder.mkdir(exist_ok=True)
    return start_supervisor(
        folder,
        actors(folder),
        settings=f'database = "{database}"\nlease_ttl_s = 3\n',
        workers=1,
        wait_ready=ready,
        args=args,
    )


def all_runs(database: str, base: Path) -> list[RunRecord]:
    store = open_store(database, base_dir=base)
    try:
        return store.list_runs(limit=100_000)
    finally:
        store.close()


def assert_no_double_fire(runs: list[RunRecord]) -> None:
    fires = Counter((r.actor, r.scheduled_for) for r in runs if r.attempt == 1 and r.scheduled_for)
    doubled = {key: n for key, n in fires.items() if n > 1}
    assert not doubled, doubled


@pytest.mark.timeout(180)
def test_a_second_supervisor_is_refused_by_the_lease_while_the_first_starts_runs(
    database: str, public_tmp: Path
) -> None:
    """Both have the same run_as_range on this host (as a standby on the active one's host
    has). Each run of the first kills every process of its uid as it takes it (an earlier
    run's leftovers), so the second must check what the runs' user can reach as a uid no run
    is given (preflight.check_uid): as the range's first uid, its check died while runs
    started ("exit status -9") and the start-up failed instead of refusing (or standing by)
    for the lease."""
    folder = public_tmp / "a"
    folder.mkdir()
    quick = write_script(
        folder, "quick.py", "import json, sys\nprint(json.dumps(json.load(sys.stdin)))\n"
    )
    first = start_supervisor(
        folder,
        actors(folder) + f'[[actors]]\nname = "quick"\nscript = "{quick}"\n',
        settings=f'database = "{database}"\nlease_ttl_s = 3\n',
        workers=1,
    )
    stop, done = threading.Event(), [0]

    def flood() -> None:  # a run starting every few milliseconds, each on the range's first uid
        with first.client() as client:
            while not stop.is_set():
                client.submit("quick", {"n": done[0]}, wait=True)
                done[0] += 1

    flooding = threading.Thread(target=flood, daemon=True)
    flooding.start()
    try:
        wait_for(lambda: done[0] >= 20, 60, "the first supervisor's runs")
        for attempt in range(3):
            second = start(public_tmp / f"b{attempt}", database, ready=False)
            code = second.proc.wait(timeout=60)
            assert code == 4 and "held by another supervisor" in second.log(), second.log()
        assert flooding.is_alive()  # runs kept starting all along
    finally:
        stop.set()
        flooding.join(timeout=30)
        first.stop()


@pytest.mark.timeout(120)
def test_second_supervisor_refuses_naming_the_holder(database: str, public_tmp: Path) -> None:
    first = start(public_tmp / "a", database)
    try:
        second = start(public_tmp / "b", database, ready=False)
        code = second.proc.wait(timeout=60)
        assert code == 4, second.log()
        log = second.log()
        assert "held by another supervisor" in log, log
        assert f"pid {first.proc.pid}" in log, log
        assert first.proc.poll() is None
        lease = first.status()["store"]["lease"]
        assert lease["term"] >= 1 and lease["valid"] is True
    finally:
        first.stop()


@pytest.mark.timeout(180)
def test_standby_takes_over_after_kill_9_without_double_fires(
    database: str, public_tmp: Path
) -> None:
    first = start(public_tmp / "a", database)
    standby = start(public_tmp / "b", database, "--standby", ready=False)
    try:
        standby.wait_for_log("standing by", 60, "word of the standby waiting")
        wait_for(lambda: len(all_runs(database, public_tmp)) >= 3, 60, "a few fires of the first")
        term = first.status()["store"]["lease"]["term"]
        os.kill(first.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        first.proc.wait(timeout=10)
        standby.wait_for_log("took over", 60, "takeover by the standby")
        took_over_s = time.monotonic() - killed
        wait_until_ready(standby, 1)
        ready_s = time.monotonic() - killed
        print(f"takeover after kill -9: lease {took_over_s:.2f} s, ready {ready_s:.2f} s")
        assert standby.status()["store"]["lease"]["term"] == term + 1
        before = len(all_runs(database, public_tmp))
        wait_for(
            lambda: len(all_runs(database, public_tmp)) >= before + 3, 60, "the standby's fires"
        )
        assert took_over_s < 30
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
            first.proc.wait()
        standby.stop()
    runs = all_runs(database, public_tmp)
    assert_no_double_fire(runs)
    assert {r.epoch for r in runs} >= {term, term + 1}
