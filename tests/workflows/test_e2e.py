"""Workflows on a real supervisor with real workers, on SQLite and PostgreSQL: step order and
output passing, waves, both failure policies, breaker pause and resume, kill -9 and restart."""

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from supervisor.workflows.records import WorkflowRunRecord
from tests.helpers import wait_for
from tests.supervisor.harness import RunningSupervisor
from tests.workflows.common import (
    assert_no_copies_at_once,
    finished_attempts,
    opened,
    spans,
    step_actors,
)

Start = Callable[..., RunningSupervisor]

WORKFLOWS = """
[[workflows]]
name = "pipe"
steps = ["a", "b", "c"]
chunk_size = 2

[[workflows]]
name = "halt"
steps = ["a", "b"]
chunk_size = 1
on_item_failure = "stop"
"""


def finished(
    sup: RunningSupervisor, database: str, run_id: str, timeout: float = 120
) -> WorkflowRunRecord:
    store = opened(sup.folder, database)
    try:

        def done() -> WorkflowRunRecord | None:
            found = store.workflow_run(run_id)
            return found if found is not None and found.finished_at is not None else None

        return wait_for(done, timeout, f"workflow run {run_id} to finish")
    finally:
        store.close()


def test_steps_in_order_in_waves_with_both_failure_policies(
    public_tmp: Path,
    supervisors: Start,
    database: str,
) -> None:
    trace, actors = step_actors(public_tmp, "abc")
    sup = supervisors(actors + WORKFLOWS, workers=4, settings=f'database = "{database}"\n')
    items = [{"id": f"p{n}"} for n in range(5)] + [{"id": "bad", "fail": "b"}]
    with sup.client() as client:
        accepted = client.run_workflow("pipe", items)
    assert (accepted["items"], accepted["waves"], accepted["steps"]) == (6, 3, ["a", "b", "c"])
    pipe_id = accepted["workflow_run_id"]
    (public_tmp / "halt.jsonl").write_text(
        "\n".join(
            orjson.dumps({"id": f"h{n}", **({"fail": "a"} if n == 1 else {})}).decode()
            for n in range(4)
        )
    )
    cli = sup.cli("workflow", "run", "halt", "--items", str(public_tmp / "halt.jsonl"), "--json")
    assert cli.returncode == 0, cli.stderr
    halt_id = orjson.loads(cli.stdout)["workflow_run_id"]

    pipe = finished(sup, database, pipe_id)
    halt = finished(sup, database, halt_id)

    # continue: the bad item failed at step b, the rest went through a, b, c in order
    assert (pipe.status, pipe.succeeded, pipe.failed, pipe.item_count) == ("failed", 5, 1, 6)
    store = opened(sup.folder, database)
    try:
        steps = store.workflow_steps(pipe_id)
        good = [s for s in steps if s["item_id"] == "p3"]
        assert [(s["step"], s["execution_order"], s["status"]) for s in good] == [
            ("a", 0, "succeeded"), ("b", 1, "succeeded"), ("c", 2, "succeeded"),
        ]  # fmt: skip
        (last,) = store.list_runs(run_id=good[-1]["run_id"])
        assert orjson.loads(last.output_json or "null") == {"id": "p3", "trail": ["a", "b", "c"]}
        bad = [(s["step"], s["status"]) for s in steps if s["item_id"] == "bad"]
        assert bad == [("a", "succeeded"), ("b", "failed_permanent")]
        conversation = store.conversation_events("p3")
        run_events = [e for e in conversation if e.aggregate_type == "run"]
        assert {e.correlation_id for e in run_events} == {pipe_id}
        assert all(e.metadata["workflow"] == "pipe" and e.metadata["workflow_run_id"] == pipe_id
                   for e in run_events)  # fmt: skip
        assert [e.metadata["execution_order"] for e in run_events if
                e.event_type == "run_succeeded"] == [0, 1, 2]  # fmt: skip
        assert [e.event_type for e in conversation][-1] == "item_succeeded"
        own = store.list_events(aggregate_type="workflow_run", aggregate_id=pipe_id)
        kinds = [e.event_type for e in own]
        assert kinds.count("wave_started") == 2 and kinds.count("wave_finished") == 3
        (end,) = [e for e in own if e.event_type == "workflow_finished"]
        assert (end.metadata["succeeded"], end.metadata["failed"]) == (5, 1)
        assert end.metadata["duration_s"] > 0
        assert store.workflow_snapshot_count(pipe_id) > 0
    finally:
        store.close()

    # waves: items running at once are of one wave, never more than chunk_size of them
    found = spans(trace)
    position = {f"p{n}": n for n in range(5)} | {"bad": 5}
    pipe_spans = [s for s in found if s.item in position]
    for span in pipe_spans:
        end = span.end or span.start + 0.05  # a failed step slept 0.05 s before it exited
        at_once = {span.item} | {
            o.item for o in pipe_spans if o.start < end and (o.end or o.start + 0.05) > span.start
        }
        assert len(at_once) <= 2, at_once
        assert len({position[i] // 2 for i in at_once}) == 1, at_once
    assert_no_copies_at_once(found)

    # stop: h1 failed at a, the run stopped, h2 and h3 never ran
    assert (halt.status, halt.succeeded, halt.failed) == ("stopped", 1, 3)
    assert {s.item for s in found if s.item.startswith("h")} == {"h0", "h1"}

    status = sup.cli("workflow", "status", "--json")
    assert status.returncode == 0, status.stderr
    shown = {p["workflow_run_id"]: p for p in orjson.loads(status.stdout)}
    assert (shown[pipe_id]["done"], shown[pipe_id]["failed"], shown[pipe_id]["items"]) == (6, 1, 6)
    items = sup.cli("workflow", "items", halt_id[:16], "--json")
    assert items.returncode == 0, items.stderr
    assert [(i["item_id"], i["status"]) for i in orjson.loads(items.stdout)] == [
        ("h0", "succeeded"), ("h1", "failed"), ("h2", "failed"), ("h3", "failed"),
    ]  # fmt: skip


def live(sup: RunningSupervisor, run_id: str) -> dict[str, Any] | None:
    """The supervisor's own view of an unfinished workflow run (None once it finished)."""
    with sup.client() as client:
        runs = client.workflows()["runs"]
    return next((r for r in runs if r["workflow_run_id"] == run_id), None)


BREAKER = """
[[workflows]]
name = "brk"
steps = ["a", "b"]
chunk_size = 1
"""


def test_a_breaker_pause_pauses_the_workflow_run_until_it_is_resumed(
    public_tmp: Path, supervisors: Start, database: str
) -> None:
    trace, actors = step_actors(public_tmp, "ab", "max_consecutive_failures = 1\n")
    sup = supervisors(actors + BREAKER, settings=f'database = "{database}"\n')
    items = [{"id": "k0"}, {"id": "k1", "fail": "b"}, {"id": "k2"}]
    with sup.client() as client:
        run_id = client.run_workflow("brk", items)["workflow_run_id"]
    paused = wait_for(
        lambda: (p := live(sup, run_id)) is not None and p["status"] == "paused" and p,
        60, "the workflow run to pause",
    )  # fmt: skip
    assert "step actor 'b' is paused" in paused["paused_reason"]
    ran = {(s.item, s.step) for s in spans(trace)}
    assert ("k2", "a") in ran and ("k2", "b") not in ran  # k2 waits at step b
    resuming = sup.cli("workflow", "resume", run_id[:8], "--json")  # a prefix, as for runs
    assert resuming.returncode == 0, resuming.stderr
    resumed = orjson.loads(resuming.stdout)
    assert resumed["changed"] and resumed["status"] == "running"
    done = finished(sup, database, run_id)
    assert (done.status, done.succeeded, done.failed) == ("failed", 2, 1)
    assert ("k2", "b") in {(s.item, s.step) for s in spans(trace) if s.end is not None}
    store = opened(sup.folder, database)
    try:
        kinds = [e.event_type for e in
                 store.list_events(aggregate_type="workflow_run", aggregate_id=run_id)]  # fmt: skip
    finally:
        store.close()
    assert kinds.count("workflow_paused") == 1 and kinds.count("workflow_resumed") == 1


GATED = """
[[workflows]]
name = "gated"
steps = ["a", "b"]
chunk_size = 3
max_parallel = 2
"""


def test_cancel_kills_and_cancels_the_step_runs_in_flight_and_ends_each_item_once(
    public_tmp: Path, supervisors: Start, database: str
) -> None:
    trace, actors = step_actors(public_tmp, "ab", "timeout_s = 120\n")
    settings = f'database = "{database}"\nkill_grace_s = 1\n'
    sup = supervisors(actors + GATED, workers=1, settings=settings)  # one slot: g1 stays queued
    gate = str(trace / "gate")  # never created: g0's step a holds its slot until killed
    items = [{"id": "g0", "gate": gate}, {"id": "g1", "gate": gate}, {"id": "g2"}]
    with sup.client() as client:
        run_id = client.run_workflow("gated", items)["workflow_run_id"]
    started = wait_for(lambda: spans(trace), 60, "g0's step a to start")
    assert [(s.item, s.step) for s in started] == [("g0", "a")]
    progress = sup.cli("workflow", "status", run_id[:8], "--json")
    assert progress.returncode == 0, progress.stderr
    assert [(p["status"], p["done"]) for p in orjson.loads(progress.stdout)] == [("running", 0)]

    cancel = sup.cli("workflow", "cancel", run_id[:8], "--json")
    assert cancel.returncode == 0, cancel.stderr
    reply = orjson.loads(cancel.stdout)
    assert (reply["status"], reply["changed"], reply["cancelled_steps"]) == ("cancelled", True, 2)
    done = finished(sup, database, run_id, timeout=60)
    assert (done.status, done.succeeded, done.failed) == ("cancelled", 0, 3)
    wait_for(lambda: not _alive(started[0].pid), 30, "the killed step's process to be gone")
    again = sup.cli("workflow", "cancel", run_id, "--json")  # finished: nothing left to cancel
    assert again.returncode != 0 and "unknown_workflow_run" in again.stdout + again.stderr

    store = opened(sup.folder, database)
    try:
        steps = store.workflow_steps(run_id)
        own = store.list_events(aggregate_type="workflow_run", aggregate_id=run_id)
    finally:
        store.close()
    # the running step (killed) and the queued one are recorded cancelled; g2 never had a step
    assert [(s["item_id"], s["step"], s["status"]) for s in steps] == [
        ("g0", "a", "cancelled"), ("g1", "a", "cancelled"),
    ]  # fmt: skip
    assert [(s.item, s.step, s.end) for s in spans(trace)] == [("g0", "a", None)]  # no step b
    ends = [(e.metadata["item"], e.event_type, e.metadata["reason"]) for e in own
            if e.event_type in ("item_succeeded", "item_failed")]  # fmt: skip
    assert sorted(ends) == [(f"g{n}", "item_failed", "cancelled") for n in range(3)]  # once each
    (end,) = [e for e in own if e.event_type == "workflow_finished"]
    assert (end.metadata["status"], end.metadata["succeeded"], end.metadata["failed"]) == (
        "cancelled", 0, 3,
    )  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


LONG = """
[[workflows]]
name = "long"
steps = ["a", "b", "c"]
chunk_size = 4
snapshot_every = 5
"""


def test_kill_9_mid_workflow_then_restart_runs_each_step_once_from_the_snapshot(
    public_tmp: Path, supervisors: Start, database: str
) -> None:
    trace, actors = step_actors(public_tmp, "abc")
    settings = f'database = "{database}"\nconcurrency = 2\n'
    sup = supervisors(actors + LONG, settings=settings)
    items = [{"id": f"x{n}", "sleep": 0.3} for n in range(10)]
    with sup.client() as client:
        run_id = client.run_workflow("long", items)["workflow_run_id"]

    watch = opened(sup.folder, database)

    def steps_done_and_one_just_begun() -> bool:
        """Kill while a step has most of its 0.3 s ahead: one seen at a wave's end may finish
        (and write its end) before the kill lands, and then no step was caught mid-run. And
        only once every step under way is stored as running: a run is sent to its worker
        before its running row commits, and one killed in between comes back as queued."""
        found, now = spans(trace), time.time()
        under_way = [s for s in found if s.end is None]
        begun = any(now - s.start < 0.1 for s in under_way)
        if not begun or len(found) - len(under_way) < 8:
            return False
        stored = {(r.run_id, r.attempt) for r in watch.find_runs(status="running", limit=100)}
        return {(s.run_id, s.attempt) for s in under_way} <= stored

    try:
        wait_for(steps_done_and_one_just_begun, 60, "some steps to finish and one to begin")
    finally:
        watch.close()
    sup.proc.kill()
    sup.proc.wait(timeout=30)

    again = supervisors(config=sup.config_path, endpoint=sup.endpoint)
    done = finished(again, database, run_id, timeout=180)
    assert (done.status, done.succeeded, done.failed) == ("succeeded", 10, 0)
    found = spans(trace)
    assert_no_copies_at_once(found)
    assert any(s.end is None for s in found), "the kill caught no step mid-run"
    store = opened(again.folder, database)
    try:
        own = store.list_events(aggregate_type="workflow_run", aggregate_id=run_id)
        lost = [r for r in store.find_runs(limit=1000) if r.reason == "supervisor_lost"]
        ends = [e.metadata["item"] for e in own if e.event_type == "item_succeeded"]
        steps = store.workflow_steps(run_id)
    finally:
        store.close()
    # every (item, step) succeeded exactly once: one step run, succeeded, per pair...
    pairs = {(s["item_id"], s["step"]): s for s in steps}
    assert len(steps) == len(pairs) == 30
    assert all(s["status"] == "succeeded" for s in steps)
    # ...and no step whose success was recorded ran again: a script that ran to its end once
    # more is a later attempt of the same run, after the kill lost the earlier one's outcome
    lost_attempts = {(r.run_id, r.attempt) for r in lost}
    for pair, attempts in finished_attempts(found).items():
        assert {run for run, _ in attempts} == {pairs[pair]["run_id"]}, (pair, attempts)
        assert set(sorted(attempts, key=lambda a: a[1])[:-1]) <= lost_attempts, (pair, attempts)
    assert sorted(ends) == sorted(f"x{n}" for n in range(10))  # each item ended exactly once
    assert lost and all(r.correlation_id == run_id for r in lost)  # in flight: supervisor_lost
    (recovered,) = [e for e in own if e.event_type == "workflow_recovered"]
    assert recovered.metadata["snapshot_seq"] > 0  # resumed from a snapshot...
    assert recovered.metadata["events_read"] <= 5 * 4  # ...plus <= snapshot_every per item
