"""SIGHUP reloads the configuration file: actors live, settings where they can be.

Each test rewrites ``supervisor.toml`` in place and signals the running supervisor, then
checks what runs (the store) and what it said (the log).
"""

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.records import RunRecord
from tests.helpers import wait_for
from tests.supervisor.harness import ECHO, RunningSupervisor, session_uids, write_script

Start = Callable[..., RunningSupervisor]


def _actor(name: str, seconds: float) -> str:
    return f"""
[[actors]]
name = "{name}"
script = "scripts/echo.py"
schedule = {{ type = "interval", seconds = {seconds} }}
"""


def _rewrite(sup: RunningSupervisor, actors: str, workers: int = 2) -> None:
    """The ``[supervisor]`` table the harness wrote (``workers`` may differ), new actors."""
    sup.config_path.write_text(
        f"[supervisor]\nworkers = {workers}\nshutdown_grace_s = 10\nallow_subsecond = true\n"
        f'run_as_range = "{session_uids()[0]}-{session_uids()[-1]}"\n' + actors
    )


def _runs(sup: RunningSupervisor, actor: str) -> list[RunRecord]:
    store = sup.store()
    try:
        return store.list_runs(actor=actor, limit=1000)
    finally:
        store.close()


def _two_more_runs(sup: RunningSupervisor, actor: str) -> None:
    seen = len(_runs(sup, actor))
    wait_for(lambda: len(_runs(sup, actor)) >= seen + 2, 30, f"{actor} to run on")


def _hup(sup: RunningSupervisor, expect: str, seen: int) -> None:
    """Send SIGHUP and wait for the ``seen+1``-th log line containing ``expect``."""
    sup.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: sup.log().count(expect) > seen, 30, f"the log to say {expect!r}:\n{sup.log()}")


@pytest.mark.timeout(120)
def test_sighup_adds_removes_and_reschedules_actors(public_tmp: Path, supervisors: Start) -> None:
    write_script(public_tmp, "echo.py", ECHO)
    sup = supervisors(_actor("stays", 0.5) + _actor("goes", 0.5) + _actor("changes", 3600))
    wait_for(lambda: len(_runs(sup, "goes")) >= 2, 30, "the first runs")
    assert len(_runs(sup, "changes")) == 1  # fired at start; the next fire is an hour away

    _rewrite(sup, _actor("stays", 0.5) + _actor("changes", 0.5) + _actor("new", 0.5), workers=3)
    reloaded_at = time.time()
    _hup(sup, "SIGHUP: configuration reloaded", 0)
    wait_for(
        lambda: (
            len(_runs(sup, "new")) >= 2
            and len(_runs(sup, "changes")) >= 3
            and sum(r.queued_at > reloaded_at + 0.1 for r in _runs(sup, "stays")) >= 2
        ),
        30,
        "the added actor, the changed schedule and the untouched one to fire",
    )
    after_reload = [r for r in _runs(sup, "goes") if r.queued_at > reloaded_at + 0.1]
    assert not after_reload, "a removed actor was still scheduled"
    assert len(_runs(sup, "goes")) >= 2  # its history stays

    names = {a["name"]: a for a in sup.status()["actors"]}
    assert set(names) == {"stays", "changes", "new"}
    assert names["changes"]["schedule"] == {"type": "interval", "seconds": 0.5}
    assert len(sup.status()["workers"]) == 2  # `workers` needs a restart...
    assert "these settings changed but need a restart to apply: workers" in sup.log()  # says so
    store = sup.store()
    try:
        (reloaded,) = [
            e for e in store.list_events(aggregate_type="supervisor")
            if e.event_type == "config_reloaded"
        ]  # fmt: skip
    finally:
        store.close()
    assert reloaded.metadata == {
        "added": ["new"], "removed": ["goes"], "changed": ["changes"],
        "restart_needed": ["workers"],
    }  # fmt: skip


@pytest.mark.timeout(120)
def test_sighup_with_an_invalid_config_keeps_the_running_one(
    public_tmp: Path, supervisors: Start
) -> None:
    write_script(public_tmp, "echo.py", ECHO)
    sup = supervisors(_actor("ticker", 0.5))
    wait_for(lambda: _runs(sup, "ticker"), 30, "the first run")

    write_script(public_tmp, "private.py", ECHO).chmod(0o600)  # the sandbox user cannot read it
    rejected = "SIGHUP: configuration rejected, keeping the running one"
    invalid = {
        "a bad schedule": _actor("ticker", 0.5).replace("interval", "fortnightly"),
        "broken TOML": "[[actors]\nname = ",
        "a missing script": _actor("ticker", 0.5).replace("echo.py", "nowhere.py"),
    }
    open_folder = public_tmp / "open"  # a run could plant a helper or a .pyc there
    open_folder.mkdir()
    write_script(open_folder, "echo.py", ECHO)
    open_folder.chmod(0o777)
    if os.geteuid() == 0:  # scripts run as `nobody`, checked at reload as at start-up
        invalid["an unreadable script"] = _actor("ticker", 0.5).replace("echo.py", "private.py")
        invalid["a script the runs could change"] = _actor("ticker", 0.5) + _actor(
            "opened", 0.5
        ).replace("scripts/echo.py", "open/scripts/echo.py")
    for number, actors in enumerate(invalid.values()):
        _rewrite(sup, actors)
        _hup(sup, rejected, number)
        _two_more_runs(sup, "ticker")
    log = sup.log()
    assert "schedule.type" in log and "invalid TOML" in log and "no such file" in log
    if os.geteuid() == 0:
        assert (
            "the sandbox user cannot read: " in log
            and f"private.py: user #{session_uids()[2]}" in log  # the first no run has (2 x 1)
        )
        assert "the runs' user can change actors' code" in log
        assert f"(it can rename scripts in {open_folder})" in log
    assert sup.proc.poll() is None
    status = sup.status()
    assert [a["name"] for a in status["actors"]] == ["ticker"]
    assert status["counters"]["reloads_rejected"] == len(invalid)
    assert status["counters"]["reloads"] == 0

    _rewrite(sup, _actor("ticker", 0.5) + _actor("after", 0.5))  # a fixed file is taken
    _hup(sup, "SIGHUP: configuration reloaded", 0)
    wait_for(lambda: _runs(sup, "after"), 30, "the actor added by the fixed file")
    store = sup.store()
    try:
        events = store.list_events(aggregate_type="supervisor")
    finally:
        store.close()
    kinds = [e.event_type for e in events if e.event_type.startswith("config_")]
    assert kinds == ["config_rejected"] * len(invalid) + ["config_reloaded"]
