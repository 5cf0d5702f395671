"""The circuit breaker and pausing: by failures, by hand, across restarts (half-open probes
and cooldowns are decided on a fake clock in ``tests/unit/test_scheduling.py``).

Whether scheduled runs stop is checked over fires that really came due: a paused actor's
schedule keeps advancing (``next_due_ts`` in ``status``) without starting runs.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from protocol.client import RunOutcome
from supervisor.records import Event, RunRecord
from tests.helpers import wait_for
from tests.supervisor.harness import ECHO, RunningSupervisor, write_script
from tests.supervisor.runlog import set_mode, trace_dir, traced

Start = Callable[..., RunningSupervisor]

# "fail": a permanent failure; "flaky": the first attempt asks for a retry; otherwise success.
BY_MODE = traced(
    """\
current = mode()
if current == "fail":
    finish(3)
if current == "flaky" and ATTEMPT == 1:
    finish(75)
finish()
"""
)


def _actor(sup: RunningSupervisor, name: str) -> dict[str, Any]:
    return next(a for a in sup.status()["actors"] if a["name"] == name)


def _runs(sup: RunningSupervisor, actor: str) -> list[RunRecord]:
    store = sup.store()
    try:
        return sorted(store.list_runs(actor=actor, limit=1000), key=lambda r: r.queued_at)
    finally:
        store.close()


def _actor_events(sup: RunningSupervisor, actor: str) -> list[Event]:
    store = sup.store()
    try:
        return store.list_events(aggregate_type="actor", aggregate_id=actor)
    finally:
        store.close()


def _fires_pass_without_runs(sup: RunningSupervisor, actor: str, fires: int, every: float) -> None:
    """Wait until ``fires`` more fires of the actor came due; no run may start meanwhile."""
    before = len(_runs(sup, actor))
    due = _actor(sup, actor)["next_due_ts"]
    wait_for(
        lambda: _actor(sup, actor)["next_due_ts"] >= due + fires * every - 0.01,
        30,
        f"{fires} fires of {actor} to pass",
        interval=0.2,
    )
    assert len(_runs(sup, actor)) == before, "a paused actor started a scheduled run"


@pytest.mark.timeout(150)
def test_consecutive_failures_pause_the_actor_until_resumed_even_across_a_restart(
    public_tmp: Path, supervisors: Start
) -> None:
    trace = trace_dir(public_tmp)
    set_mode(trace, "fail")
    write_script(public_tmp, "by_mode.py", BY_MODE)
    sup = supervisors(
        f"""
        [[actors]]
        name = "fragile"
        script = "scripts/by_mode.py"
        env = {{ TRACE_DIR = "{trace}" }}
        schedule = {{ type = "interval", seconds = 0.5 }}
        max_consecutive_failures = 3
        """,
        workers=1,
    )
    wait_for(lambda: _actor(sup, "fragile")["paused"], 30, "the breaker to open")
    runs = _runs(sup, "fragile")
    assert [(r.status, r.trigger) for r in runs] == [("failed_permanent", "schedule")] * 3
    state = _actor(sup, "fragile")
    reason = "circuit breaker: 3 consecutive failures"
    assert (state["paused_reason"], state["consecutive_failures"]) == (reason, 3)
    (paused,) = [e for e in _actor_events(sup, "fragile") if e.event_type == "actor_paused"]
    assert paused.metadata == {"reason": reason, "by": "breaker"}
    assert f"WARNING supervisor.breaker[{sup.proc.pid}]: actor fragile paused: {reason}" in (
        sup.log()
    )
    _fires_pass_without_runs(sup, "fragile", 3, 0.5)

    refused = sup.cli("trigger", "fragile")  # trigger needs --force while paused
    assert refused.returncode == 5 and "paused" in refused.stderr

    assert sup.stop() == 0
    again = supervisors(config=sup.config_path, endpoint=sup.endpoint, workers=1)
    state = _actor(again, "fragile")
    assert (state["paused"], state["paused_reason"], state["consecutive_failures"]) == (
        True, reason, 3,
    )  # fmt: skip
    _fires_pass_without_runs(again, "fragile", 3, 0.5)

    set_mode(trace, "ok")
    forced = again.cli("trigger", "fragile", "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    run_id = orjson.loads(forced.stdout)["run_id"]
    wait_for(
        lambda: any(
            r.run_id == run_id and r.status == "succeeded" for r in _runs(again, "fragile")
        ),
        30,
        "the forced run",
    )
    state = _actor(again, "fragile")
    assert state["paused"] and state["consecutive_failures"] == 0  # a success resets the count

    resumed = again.cli("resume", "fragile", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert orjson.loads(resumed.stdout) == {"actor": "fragile", "paused": False}
    wait_for(
        lambda: any(
            r.trigger == "schedule" and r.status == "succeeded" for r in _runs(again, "fragile")
        ),
        30,
        "scheduled runs to start again",
    )
    assert not _actor(again, "fragile")["paused"]
    types = [
        (e.event_type, e.metadata.get("by"))
        for e in _actor_events(again, "fragile")
        if e.event_type in ("actor_paused", "actor_resumed")
    ]
    assert types == [("actor_paused", "breaker"), ("actor_resumed", "operator")]


@pytest.mark.timeout(120)
def test_pause_with_a_reason_and_resume_by_hand(public_tmp: Path, supervisors: Start) -> None:
    write_script(public_tmp, "echo.py", ECHO)
    sup = supervisors(
        """
        [[actors]]
        name = "ticker"
        script = "scripts/echo.py"
        schedule = { type = "interval", seconds = 0.5 }
        """
    )
    wait_for(lambda: _runs(sup, "ticker"), 30, "the first scheduled run")
    paused = sup.cli("pause", "ticker", "--reason", "maintenance window", "--json")
    assert paused.returncode == 0, paused.stderr
    assert orjson.loads(paused.stdout) == {
        "actor": "ticker", "paused": True, "reason": "maintenance window",
    }  # fmt: skip
    state = _actor(sup, "ticker")
    assert (state["paused"], state["paused_reason"]) == (True, "maintenance window")
    _fires_pass_without_runs(sup, "ticker", 3, 0.5)
    assert sup.cli("trigger", "ticker").returncode == 5
    with sup.client() as client:  # a submission is explicit: it runs even while paused
        outcome = client.submit("ticker", {"by": "hand"}, wait=True)
    assert isinstance(outcome, RunOutcome) and outcome.succeeded
    assert sup.cli("resume", "ticker").returncode == 0
    count = len(_runs(sup, "ticker"))
    wait_for(lambda: len(_runs(sup, "ticker")) >= count + 2, 30, "scheduled runs after resume")
    events = [
        (e.event_type, e.metadata)
        for e in _actor_events(sup, "ticker")
        if e.event_type in ("actor_paused", "actor_resumed")
    ]
    assert events == [
        ("actor_paused", {"reason": "maintenance window", "by": "operator"}),
        ("actor_resumed", {"by": "operator"}),
    ]
