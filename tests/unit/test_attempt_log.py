"""Finished attempts in the log: a WARNING line per failure, successes only counted in one
INFO summary per period (a line per success cost the loop thread ~0.24 ms a run)."""

import logging

import pytest

from protocol.outcomes import RunStatus
from supervisor.records import RunRecord, Trigger, evolve
from supervisor.runs import AttemptLog
from tests.unit.fakes import FakeClock


def attempt(actor: str, status: str, run_id: str = "r1") -> RunRecord:
    queued = RunRecord(
        run_id=run_id, attempt=1, actor=actor, correlation_id=run_id, trigger=Trigger.SUBMIT,
        input_json="{}", queued_at=0.0,
    )  # fmt: skip
    return evolve(queued, status=status, duration_ms=1.5)


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "supervisor.runbook"]


def test_failures_get_a_line_each_and_successes_only_a_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    attempts = AttemptLog(clock, every_s=60)
    caplog.set_level(logging.INFO, logger="supervisor.runbook")
    for n in range(3):
        attempts.attempt(attempt("noop", RunStatus.SUCCEEDED, f"r{n}"), None, clock())
    attempts.attempt(attempt("broken", RunStatus.FAILED_PERMANENT), None, clock())
    assert lines(caplog) == [(logging.WARNING, "run failed_permanent")]
    attempts.summarize()  # not due yet
    assert len(lines(caplog)) == 1
    clock.advance(60)
    attempts.summarize()
    level, message = lines(caplog)[-1]
    assert (level, message) == (
        logging.INFO, "attempts finished: broken failed_permanent=1, noop succeeded=3"
    )  # fmt: skip
    summary = caplog.records[-1]
    assert summary.attempts == {"broken": {"failed_permanent": 1}, "noop": {"succeeded": 3}}  # type: ignore[attr-defined]
    assert summary.total == 4  # type: ignore[attr-defined]


def test_successes_are_logged_one_by_one_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    attempts = AttemptLog(clock)
    caplog.set_level(logging.DEBUG, logger="supervisor.runbook")
    attempts.attempt(attempt("noop", RunStatus.SUCCEEDED), None, clock())
    assert lines(caplog) == [(logging.DEBUG, "run succeeded")]
    assert caplog.records[-1].actor == "noop"  # type: ignore[attr-defined]


def test_no_summary_without_attempts_and_a_forced_one_at_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    attempts = AttemptLog(clock, every_s=60)
    caplog.set_level(logging.INFO, logger="supervisor.runbook")
    clock.advance(120)
    attempts.summarize()
    assert lines(caplog) == []  # nothing finished: no line
    attempts.attempt(attempt("noop", RunStatus.SUCCEEDED), None, clock())
    attempts.summarize(force=True)  # at stop, before its period is over
    assert lines(caplog) == [(logging.INFO, "attempts finished: noop succeeded=1")]
    attempts.summarize(force=True)
    assert len(lines(caplog)) == 1  # counts start again from zero
