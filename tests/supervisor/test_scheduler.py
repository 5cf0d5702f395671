"""Schedules against a real supervisor: catching up after a downtime stored in the database.

The supervisor runs in its own process, so its clock cannot be injected; a downtime is
simulated by moving the stored ``task_state.next_run_at`` into the past while it is stopped.
(``missed_fires`` has pure-function tests in ``test_schedule.py``; the catch-up and overlap
decisions have fake-clock tests in ``tests/unit/test_scheduling.py``.)
"""

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from supervisor.records import RunRecord
from tests.helpers import wait_for
from tests.supervisor.harness import ECHO, RunningSupervisor, write_script

Start = Callable[..., RunningSupervisor]

EVERY_S = 60.0
CATCH_UP = {"none": "", "once": "", "all": "catch_up_max = 100", "capped": "catch_up_max = 3"}


@pytest.mark.timeout(120)
def test_catch_up_policies_after_ten_minutes_of_downtime(
    public_tmp: Path, supervisors: Start
) -> None:
    write_script(public_tmp, "echo.py", ECHO)
    actors = "".join(
        f"""
        [[actors]]
        name = "{name}"
        script = "scripts/echo.py"
        schedule = {{ type = "interval", seconds = {EVERY_S} }}
        catch_up = "{"all" if name == "capped" else name}"
        {extra}
        """
        for name, extra in CATCH_UP.items()
    )
    sup = supervisors(actors)
    store = sup.store()
    try:  # a fresh interval schedule fires once at start: then its state is seeded
        wait_for(lambda: len(store.list_runs()) == len(CATCH_UP), 30, "the first fires")
    finally:
        store.close()
    assert sup.stop() == 0

    store = sup.store()
    try:
        states = store.load_task_states()
        # Down for ten and a half minutes: the fires at -630 s, -570 s, ..., -30 s were missed.
        last_due = time.time() - 630.0
        store.write_batch([replace(states[name], next_run_at=last_due) for name in CATCH_UP])
    finally:
        store.close()
    missed = [last_due + k * EVERY_S for k in range(11)]

    again = supervisors(config=sup.config_path, endpoint=sup.endpoint)
    expected = {"none": [], "once": missed[-1:], "all": missed, "capped": missed[-3:]}
    store = again.store()
    try:

        def caught_up() -> dict[str, list[RunRecord]]:
            runs = [r for r in store.list_runs(limit=1000) if r.trigger == "catch_up"]
            found = {name: [r for r in runs if r.actor == name] for name in CATCH_UP}
            done = all(
                len(found[n]) == len(expected[n]) and all(r.is_final for r in found[n])
                for n in CATCH_UP
            )
            return found if done else {}

        found = wait_for(caught_up, 60, "the catch-up runs")
    finally:
        store.close()
    for name, runs in found.items():
        fires = sorted(r.scheduled_for or 0.0 for r in runs)
        assert fires == pytest.approx(expected[name], abs=1e-3), name
        assert all(r.status == "succeeded" for r in runs)
        assert not _overlapping(runs), f"{name}: catch-up runs overlap (overlap = skip)"
    # Afterwards each schedule continues on its grid with the next future fire.
    status = {a["name"]: a for a in again.status()["actors"]}
    for name in CATCH_UP:
        assert status[name]["next_due_ts"] == pytest.approx(last_due + 11 * EVERY_S, abs=1e-3)
    assert again.log().count("missed fires while stopped") == len(CATCH_UP)


def _overlapping(runs: list[RunRecord]) -> list[tuple[RunRecord, RunRecord]]:
    return [
        (a, b)
        for i, a in enumerate(runs)
        for b in runs[i + 1 :]
        if (a.started_at or 0) < (b.finished_at or 0) and (b.started_at or 0) < (a.finished_at or 0)
    ]
