"""The run book with a fake clock and an in-memory sink: every decision, no process."""

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from protocol.messages import Submit
from protocol.outcomes import Reason, RunStatus
from supervisor.heap import EntryKind
from supervisor.records import Trigger
from supervisor.requests import Requests
from supervisor.runbook import OVERDUE_SLACK_S, POISON_LOSSES, Phase
from supervisor.runs import Waiter
from supervisor.status import Supervisor
from tests.unit.fakes import Bench, bench, result

JOB = """
[[actors]]
name = "job"
script = "job.py"
timeout_s = 10
max_retries = 2
retry_backoff_s = 4
retry_jitter = false
"""


@pytest.fixture
def b(tmp_path: Path) -> Bench:
    return bench(tmp_path, JOB)


def waiter(rid: str = "r1", wants_result: bool = True) -> Waiter:
    return Waiter(identity=b"client", request_id=rid, wants_result=wants_result)


def test_a_run_is_acknowledged_and_sent_only_once_durable(b: Bench) -> None:
    """A free worker takes a run in the turn it is accepted: its queued and running rows then
    commit together, and only after that commit does the client hear "accepted" and the
    worker get the run (a crash before it leaves a running row, which a restart records as
    lost, never a queued row for a run that went on running)."""
    active = b.book.accept(
        b.book.actors["job"], input_value={"n": 1}, trigger=Trigger.SUBMIT, waiter=waiter()
    )
    assert b.book.waiting() == 1 and b.replies.sent == []
    b.workers.free.append("w1")
    b.book.dispatch(b.workers)
    assert b.workers.sent == [] and b.workers.free == []  # w1's room is taken, nothing sent
    assert active.record.status == RunStatus.RUNNING and active.sent_to is None
    assert [r.status for r in b.sink.runs(active.run_id)] == ["queued", "running"]
    assert b.sink.committed == 0
    b.commit()
    assert b.replies.sent == [("r1", "accepted", {"run_id": active.run_id, "actor": "job"})]
    ((worker, run),) = b.workers.sent
    assert (worker, run.run_id, run.attempt, run.input_json) == ("w1", active.run_id, 1, '{"n":1}')
    assert active.sent_to == "w1" and b.book.in_flight() == [active]


def test_a_result_is_delivered_after_its_row_is_committed(b: Bench) -> None:
    active = b.book.accept(b.book.actors["job"], input_value={}, trigger="submit", waiter=waiter())
    b.commit()
    ((_, run),) = b.dispatch("w1")
    b.book.on_result("w1", result(run, "w1", RunStatus.SUCCEEDED, output={"ok": True}))
    assert active.run_id not in b.book.runs and b.book.input_bytes == 0
    assert [kind for _, kind, _ in b.replies.sent] == ["accepted"]  # not durable yet
    b.commit()
    _, kind, outcome = b.replies.sent[-1]
    assert (
        kind == "result" and outcome["status"] == "succeeded" and outcome["output"] == {"ok": True}
    )
    kept = b.book.outcomes.get(active.run_id)
    assert kept is not None and kept.as_dict() == outcome
    assert b.book.counters["runs_succeeded"] == 1


def test_a_run_that_ran_a_changed_script_records_what_ran(b: Bench) -> None:
    """Its worker says the script it ran is not the version sent (the file changed between the
    supervisor's read and the run's): the row names what ran, with no history id."""
    active = b.book.accept(b.book.actors["job"], input_value={}, trigger="submit")
    ((_, run),) = b.dispatch("w1")
    assert active.record.code_sha256 == run.code_sha256 == "sha"
    ran = "f" * 64
    b.book.on_result("w1", result(run, "w1", RunStatus.SUCCEEDED, code_sha256=ran))
    final = b.sink.runs(active.run_id)[-1]
    assert (final.status, final.code_sha256, final.code_history_id) == ("succeeded", ran, None)


def test_stale_results_are_ignored(b: Bench) -> None:
    b.book.accept(b.book.actors["job"], input_value={}, trigger="submit")
    b.commit()
    ((_, run),) = b.dispatch("w1")
    b.book.on_result("w2", result(run, "w2", RunStatus.SUCCEEDED))  # not the worker holding it
    assert b.book.counters["stale_results"] == 1 and len(b.book.in_flight()) == 1


def test_a_retryable_failure_is_retried_after_its_backoff_then_gives_up(b: Bench) -> None:
    active = b.book.accept(b.book.actors["job"], input_value={}, trigger="submit")
    b.commit()
    delays = []
    for attempt in (1, 2, 3):
        ((_, run),) = b.dispatch("w1")
        assert run.attempt == attempt
        b.book.on_result("w1", result(run, "w1", RunStatus.FAILED_RETRYABLE, Reason.EXIT_CODE))
        if attempt == 3:
            break
        assert active.record.status == RunStatus.QUEUED and active.record.trigger == "retry"
        due = active.record.scheduled_for
        assert due is not None
        delays.append(due - b.clock())
        b.clock.advance(due - b.clock() - 0.01)
        b.book.fire_due(b.clock())
        assert not b.book.ready  # not due yet
        b.clock.advance(0.01)
        b.book.fire_due(b.clock())
        assert list(b.book.ready) == [active.run_id]
    assert delays == [4.0, 8.0]  # exponential, no jitter
    assert active.run_id not in b.book.runs  # max_retries = 2: three attempts, then final
    assert b.book.counters["retries_scheduled"] == 2 and b.book.counters["runs_failed"] == 1


def test_a_permanent_failure_is_not_retried(b: Bench) -> None:
    b.book.accept(b.book.actors["job"], input_value={}, trigger="submit")
    b.commit()
    ((_, run),) = b.dispatch("w1")
    b.book.on_result("w1", result(run, "w1", RunStatus.FAILED_PERMANENT, Reason.EXIT_CODE))
    assert b.book.runs == {} and b.book.counters["retries_scheduled"] == 0


def test_worker_losses_are_free_until_the_run_is_poison(b: Bench) -> None:
    active = b.book.accept(b.book.actors["job"], input_value={}, trigger="submit")
    b.commit()
    for loss in range(1, POISON_LOSSES + 1):
        b.dispatch("w1")
        b.book.worker_gone("w1", "was killed by SIGKILL", [active.run_id])
        if loss < POISON_LOSSES:
            assert active.record.status == RunStatus.QUEUED
            b.clock.advance(3600)
            b.book.fire_due(b.clock())
    finals = [r for r in b.sink.runs(active.run_id) if r.finished_at is not None]
    assert [r.reason for r in finals] == [Reason.WORKER_LOST, Reason.POISON]
    assert finals[-1].status == RunStatus.FAILED_PERMANENT and active.run_id not in b.book.runs
    assert b.book.counters["worker_deaths"] == POISON_LOSSES


def test_a_missing_script_or_actor_fails_the_attempt_permanently(b: Bench) -> None:
    """Refused at dispatch, in the turn it was accepted: its client still hears "accepted"
    first (once the queued row commits), then the outcome."""
    b.code.missing = "script file job.py does not exist"
    active = b.book.accept(b.book.actors["job"], input_value={}, trigger="submit", waiter=waiter())
    assert b.dispatch("w1") == []
    (final,) = [r for r in b.sink.runs(active.run_id) if r.finished_at is not None]
    assert (final.status, final.reason) == (RunStatus.FAILED_PERMANENT, Reason.FILE_MISSING)
    assert [kind for _, kind, _ in b.replies.sent] == ["accepted", "result"]


def test_runs_of_an_actor_whose_code_is_loading_wait_for_it(b: Bench) -> None:
    b.code.loading_actors.add("job")
    active = b.book.accept(b.book.actors["job"], input_value={}, trigger="submit")
    b.commit()
    assert b.dispatch("w1") == [] and list(b.book.ready) == [active.run_id]
    b.code.loading_actors.clear()
    assert len(b.dispatch()) == 1 and not b.book.ready


def test_a_run_its_worker_never_got_is_retried_without_counting_as_poison(b: Bench) -> None:
    """The send fails (the worker is unreachable, and the shell kills it): the attempt's row
    already says running, so the worker's death ends it as lost, and the retry does not count
    it toward poison -- the run never reached that worker."""
    b.workers.unreachable.add("dead")
    active = b.book.accept(b.book.actors["job"], input_value={}, trigger="submit")
    assert b.dispatch("dead") == [] and active.sent_to is None
    b.book.worker_gone("dead", "unreachable", [active.run_id])
    assert [r.reason for r in b.sink.runs(active.run_id)][-2:] == [Reason.WORKER_LOST, None]
    assert active.worker_losses == 0 and active.record.attempt == 2
    b.clock.advance(10)
    b.book.fire_due(b.clock())
    assert b.dispatch("w1")[0][1].run_id == active.run_id


def test_restart_recovery_requeues_queued_runs_and_fails_running_ones(b: Bench) -> None:
    queued = b.book.accept(b.book.actors["job"], input_value={}, trigger="submit").record
    running = b.book.accept(b.book.actors["job"], input_value={}, trigger="submit").record
    b.book.runs.clear()  # a new supervisor: the rows are all it knows
    b.book.input_bytes = 0
    running = replace(running, status=RunStatus.RUNNING, started_at=b.clock() - 5)
    b.book.restore([queued, running])
    assert (EntryKind.RETRY, queued.run_id) in b.book.heap
    lost = [r for r in b.sink.runs(running.run_id) if r.reason == Reason.SUPERVISOR_LOST]
    assert lost and lost[0].status == RunStatus.FAILED_RETRYABLE and lost[0].duration_ms == 5000
    assert b.book.runs[running.run_id].record.attempt == 2  # retried


def test_an_overdue_run_is_reported_after_timeout_kill_grace_and_slack(b: Bench) -> None:
    b.book.accept(b.book.actors["job"], input_value={}, trigger="submit")
    b.commit()
    b.dispatch("w1")
    limit = 10 + b.book.settings.kill_grace_s + OVERDUE_SLACK_S
    b.clock.advance(limit)
    assert b.book.overdue() == []
    b.clock.advance(0.1)
    assert len(b.book.overdue()) == 1


def test_a_run_its_worker_does_not_have_yet_is_never_overdue(b: Bench) -> None:
    """A store outage holds its running row back, so it is not sent: not the worker's fault.
    Its time counts from the send."""
    b.book.accept(b.book.actors["job"], input_value={}, trigger="submit")
    b.workers.free.append("w1")
    b.book.dispatch(b.workers)
    limit = 10 + b.book.settings.kill_grace_s + OVERDUE_SLACK_S
    b.clock.advance(limit + 1)
    assert b.book.overdue() == []
    b.commit()
    assert len(b.workers.sent) == 1 and b.book.overdue() == []
    b.clock.advance(limit + 0.1)
    assert len(b.book.overdue()) == 1


def test_idempotency_keys_are_remembered_with_the_input_digest(b: Bench) -> None:
    active = b.book.accept(
        b.book.actors["job"], input_value={"a": 1}, trigger="submit", idempotency_key="k"
    )
    found = b.book.idempotency.find("job", "k")
    assert found is not None and found[0] == active.run_id and found[1] is not None
    assert b.book.idempotency.find("job", "other") is None


def test_a_duplicate_submit_is_accepted_only_once_the_first_runs_row_is_committed(
    b: Bench,
) -> None:
    """The same idempotency key in the turn the first run was accepted: the second client is
    told "accepted" (deduplicated) after the commit, as the first is, never before; and in
    the turn it finished, its outcome only once its final row is committed."""
    sup = SimpleNamespace(book=b.book, control=b.replies, actors=b.book.actors)
    requests = Requests(cast(Supervisor, sup))
    submit = {"actor": "job", "input": {"a": 1}, "wait": True, "idempotency_key": "k"}
    requests.handle(waiter("first"), Submit(id="first", **submit))
    requests.handle(waiter("second"), Submit(id="second", **submit))
    assert b.replies.sent == []
    ((_, run),) = b.dispatch("w1")  # commits the queued (and running) rows
    assert [(rid, kind, data.get("deduplicated")) for rid, kind, data in b.replies.sent] == [
        ("first", "accepted", None),
        ("second", "accepted", True),
    ]
    b.book.on_result("w1", result(run, "w1", RunStatus.SUCCEEDED, output={}))
    requests.handle(waiter("third"), Submit(id="third", **submit))  # finished, not committed
    assert [rid for rid, _, _ in b.replies.sent] == ["first", "second"]
    b.commit()
    assert sorted(rid for rid, kind, _ in b.replies.sent if kind == "result") == [
        "first", "second", "third",
    ]  # fmt: skip


def test_a_fire_refused_by_the_store_is_dropped_not_run(tmp_path: Path) -> None:
    b = bench(tmp_path, JOB, epoch=1)  # under a lease: a fire is claimed in the store
    active = b.book.accept(
        b.book.actors["job"], input_value={}, trigger="schedule", scheduled_for=b.clock()
    )
    assert active.record.is_fire and not b.book.ready  # it waits for its claim
    b.sink.commit()
    b.book.on_commits(refused=[active.run_id])
    assert active.run_id not in b.book.runs and b.book.counters["fires_refused"] == 1
    assert b.dispatch("w1") == []


def test_the_ready_queue_is_bounded_in_count_and_bytes(tmp_path: Path) -> None:
    b = bench(tmp_path, JOB, queue_size=2, queue_max_bytes=100)
    assert b.book.has_room(100) and not b.book.has_room(101)
    b.book.accept(b.book.actors["job"], input_value={}, trigger="submit")
    b.book.accept(b.book.actors["job"], input_value={}, trigger="submit")
    assert not b.book.has_room()


def test_shutdown_drains_then_kills_then_gives_up(b: Bench) -> None:
    held = b.book.accept(b.book.actors["job"], input_value={}, trigger="submit")
    b.commit()
    b.dispatch("w1")
    queued = b.book.accept(b.book.actors["job"], input_value={}, trigger="submit", waiter=waiter())
    b.commit()  # durable while running: ready, acknowledged
    b.book.begin_shutdown("SIGTERM")
    assert b.book.phase is Phase.DRAINING and not b.book.accepting and not b.book.ready
    assert b.replies.sent[-1][1] == "shutting_down" and queued.run_id in b.book.runs
    assert b.book.advance_shutdown() is False  # within the grace period
    b.clock.advance(b.book.settings.shutdown_grace_s)
    assert b.book.advance_shutdown() is True and b.book.phase is Phase.KILLING
    b.clock.advance(b.book.settings.kill_grace_s + 5.0)
    assert b.book.advance_shutdown() is False and b.book.phase is Phase.DONE
    final = b.sink.runs(held.run_id)
    assert any(r.reason == Reason.SHUTDOWN for r in final)


def test_a_run_accepted_as_shutdown_begins_is_told_once_that_it_stays_queued(b: Bench) -> None:
    """Its queued row is not committed when shutdown begins: its client hears nothing until
    the commit, then only that the run stays queued for the next start (never "accepted"
    after that), and no worker gets it."""
    active = b.book.accept(b.book.actors["job"], input_value={}, trigger="submit", waiter=waiter())
    b.book.begin_shutdown("SIGTERM")
    assert b.replies.sent == []
    assert b.dispatch("w1") == []
    assert [kind for _, kind, _ in b.replies.sent] == ["shutting_down"]
    assert active.record.status == RunStatus.QUEUED and active.run_id in b.book.runs


def test_a_second_stop_signal_ends_the_grace_period(b: Bench) -> None:
    b.book.accept(b.book.actors["job"], input_value={}, trigger="submit")
    b.commit()
    b.dispatch("w1")
    b.book.begin_shutdown("SIGTERM")
    b.book.begin_shutdown("SIGTERM")
    assert b.book.advance_shutdown() is True and b.book.phase is Phase.KILLING


def test_with_nothing_in_flight_shutdown_is_done_at_once(b: Bench) -> None:
    b.book.begin_shutdown("SIGINT")
    b.book.advance_shutdown()
    assert b.book.phase is Phase.DONE


def test_every_row_of_a_run_carries_the_lease_epoch(tmp_path: Path) -> None:
    """The run book stamps its epoch on the rows it makes, queued, running, final and the
    retry's, so the batch writer need not copy each row to stamp it."""
    b = bench(tmp_path, JOB, epoch=7)
    active = b.book.accept(b.book.actors["job"], input_value={}, trigger="submit")
    b.commit()
    ((_, run),) = b.dispatch("w1")
    b.book.on_result("w1", result(run, "w1", RunStatus.FAILED_RETRYABLE, Reason.TIMEOUT))
    rows = b.sink.runs(active.run_id)
    assert [(r.attempt, r.status) for r in rows] == [
        (1, RunStatus.QUEUED), (1, RunStatus.RUNNING), (1, RunStatus.FAILED_RETRYABLE),
        (2, RunStatus.QUEUED),
    ]  # fmt: skip
    assert {r.epoch for r in rows} == {7}
