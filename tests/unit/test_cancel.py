"""Cancelling runs in the run book (fake clock, in-memory sink): a queued run ends at once and
never starts, a running one ends with its worker's result, and either way there is exactly one
final outcome and no retry."""

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from protocol.messages import Cancel
from protocol.outcomes import Reason, RunStatus
from supervisor.heap import EntryKind
from supervisor.records import Event, Record, Trigger
from supervisor.requests import Requests
from supervisor.runs import Waiter
from supervisor.status import Supervisor
from tests.unit.fakes import Bench, MemorySink, bench, result

JOB = """
[[actors]]
name = "job"
script = "job.py"
timeout_s = 10
max_retries = 2
retry_backoff_s = 4
retry_jitter = false
max_consecutive_failures = 1
"""


@pytest.fixture
def b(tmp_path: Path) -> Bench:
    return bench(tmp_path, JOB)


def waiter(rid: str) -> Waiter:
    return Waiter(identity=b"client", request_id=rid, wants_result=True)


def finals(b: Bench, run_id: str) -> list[str]:
    return [r.status for r in b.sink.runs(run_id) if r.is_final]


def test_a_run_given_a_worker_but_not_sent_yet_is_cancelled_at_once_and_never_sent(
    b: Bench,
) -> None:
    """Between dispatch and the commit of its running row, a run holds its worker's room but
    the worker has not got it: a cancel then ends it like a queued one, no kill is asked
    (``sent_to`` is None), and the commit gives the room back instead of sending it."""
    active = b.book.accept(b.book.actors["job"], input_value={}, trigger=Trigger.SUBMIT,
                           waiter=waiter("submitter"))  # fmt: skip
    b.workers.free.append("w1")
    b.book.dispatch(b.workers)
    assert active.worker_id == "w1" and active.sent_to is None and b.workers.free == []
    assert b.book.cancel(active.run_id, waiter("canceller")) is active
    assert active.run_id not in b.book.runs
    b.commit()
    assert b.workers.sent == [] and b.workers.free == ["w1"]
    assert finals(b, active.run_id) == ["cancelled"]
    assert active.record.error == "cancelled before it started"
    kinds = [(rid, kind) for rid, kind, _ in b.replies.sent]
    assert kinds == [("submitter", "accepted"), ("submitter", "result"), ("canceller", "result")]


def test_a_queued_run_is_cancelled_at_once_and_never_dispatched(b: Bench) -> None:
    active = b.book.accept(b.book.actors["job"], input_value={}, trigger=Trigger.SUBMIT,
                           waiter=waiter("submitter"))  # fmt: skip
    b.commit()
    assert list(b.book.ready) == [active.run_id]
    assert b.book.cancel(active.run_id, waiter("canceller")) is active
    assert active.run_id not in b.book.runs and not b.book.ready
    assert b.dispatch("w1") == []
    b.commit()
    outcomes = {rid: data for rid, kind, data in b.replies.sent if kind == "result"}
    assert outcomes["submitter"]["status"] == outcomes["canceller"]["status"] == "cancelled"
    assert outcomes["canceller"]["reason"] == Reason.CANCELLED
    assert finals(b, active.run_id) == ["cancelled"]
    # an operator's cancel is not the actor's failure: the breaker (after 1) stays closed
    assert not b.book.actors["job"].state.is_paused
    assert b.book.cancel(active.run_id, waiter("late")) is None  # finished: nothing to cancel


def test_a_run_cancelled_before_its_row_is_durable_is_acknowledged_first(b: Bench) -> None:
    active = b.book.accept(b.book.actors["job"], input_value={}, trigger=Trigger.SUBMIT,
                           waiter=waiter("submitter"))  # fmt: skip
    b.book.cancel(active.run_id, waiter("canceller"))
    assert b.replies.sent == []  # nothing is said before the queued row is committed
    b.commit()
    assert [(rid, kind) for rid, kind, _ in b.replies.sent] == [
        ("submitter", "accepted"), ("submitter", "result"), ("canceller", "result"),
    ]  # fmt: skip
    assert b.dispatch("w1") == [] and finals(b, active.run_id) == ["cancelled"]


def test_a_run_waiting_for_its_retry_is_cancelled_and_never_retried(b: Bench) -> None:
    active = b.book.accept(b.book.actors["job"], input_value={}, trigger=Trigger.SUBMIT)
    b.commit()
    ((_, run),) = b.dispatch("w1")
    b.book.on_result("w1", result(run, "w1", RunStatus.FAILED_RETRYABLE, Reason.EXIT_CODE))
    assert (EntryKind.RETRY, active.run_id) in b.book.heap
    b.book.cancel(active.run_id, waiter("canceller"))
    assert (EntryKind.RETRY, active.run_id) not in b.book.heap
    b.clock.advance(3600)
    b.book.fire_due(b.clock())
    assert b.dispatch("w1") == []
    b.commit()
    assert [(r.attempt, r.status) for r in b.sink.runs(active.run_id) if r.is_final] == [
        (1, "failed_retryable"), (2, "cancelled"),
    ]  # fmt: skip


def test_a_running_run_ends_with_its_result_and_is_not_retried(b: Bench) -> None:
    active = b.book.accept(b.book.actors["job"], input_value={}, trigger=Trigger.SUBMIT)
    b.commit()
    ((_, run),) = b.dispatch("w1")
    assert b.book.cancel(active.run_id, waiter("canceller")) is active
    assert active.record.status == RunStatus.RUNNING  # the worker kills it; nothing ends here
    # the kill raced with a failure of its own: recorded as it ended, and never retried
    b.book.on_result("w1", result(run, "w1", RunStatus.FAILED_RETRYABLE, Reason.TIMEOUT))
    b.commit()
    assert active.run_id not in b.book.runs and b.book.counters["retries_scheduled"] == 0
    assert finals(b, active.run_id) == ["failed_retryable"]
    ((_, kind, outcome),) = [s for s in b.replies.sent if s[0] == "canceller"]
    assert kind == "result" and outcome["reason"] == "timeout"


def test_a_running_run_killed_for_the_cancel_is_recorded_cancelled(b: Bench) -> None:
    active = b.book.accept(b.book.actors["job"], input_value={}, trigger=Trigger.SUBMIT)
    b.commit()
    ((_, run),) = b.dispatch("w1")
    b.book.cancel(active.run_id, waiter("canceller"))
    b.book.on_result("w1", result(run, "w1", RunStatus.CANCELLED, Reason.CANCELLED))
    b.commit()
    assert finals(b, active.run_id) == ["cancelled"]
    types = [r.event_type for r in b.sink.records
             if isinstance(r, Event) and r.aggregate_id == active.run_id]  # fmt: skip
    assert types[-2:] == [
        "run_cancel_requested", "run_cancelled",
    ]  # fmt: skip


class CommittingSink(MemorySink):
    """A writer thread that commits each record the moment it is put."""

    def put(self, record: Record) -> int:
        seq = super().put(record)
        self.committed = seq
        return seq


def test_the_canceller_hears_cancelling_before_an_outcome_committed_at_once(
    tmp_path: Path,
) -> None:
    b = bench(tmp_path, JOB)
    b.book.sink = b.sink = CommittingSink()
    active = b.book.accept(b.book.actors["job"], input_value={}, trigger=Trigger.SUBMIT)
    b.book.on_commits()
    killed: list[tuple[str, str, int]] = []
    sup = SimpleNamespace(
        book=b.book, control=b.replies,
        kill_on_worker=lambda *args: killed.append(args) or True,
    )  # fmt: skip
    requests = Requests(cast(Supervisor, sup))
    requests.handle(waiter("c1"), Cancel(id="c1", run_id=active.run_id))
    assert [(rid, kind) for rid, kind, _ in b.replies.sent] == [
        ("c1", "cancelling"),
        ("c1", "result"),
    ]
    requests.handle(waiter("c2"), Cancel(id="c2", run_id=active.run_id))
    assert b.replies.sent[-1][:2] == ("c2", "not_cancellable") and killed == []

    running = b.book.accept(b.book.actors["job"], input_value={}, trigger=Trigger.SUBMIT)
    b.book.on_commits()
    ((_, run),) = b.dispatch("w1")
    requests.handle(waiter("c3"), Cancel(id="c3", run_id=running.run_id))
    assert b.replies.sent[-1][:2] == ("c3", "cancelling")
    assert killed == [("w1", running.run_id, run.attempt)]
