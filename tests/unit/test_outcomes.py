"""One outcome type: built by the supervisor from a row, read back by the client, strictly."""

from dataclasses import fields

import orjson
import pytest

from protocol import ProtocolError
from protocol.messages import STATUSES
from protocol.outcomes import OUTCOME_FIELDS, RunOutcome, RunStatus
from supervisor.records import RunRecord
from supervisor.runs import outcome_of


def row(**kw: object) -> RunRecord:
    base = dict(
        run_id="r1", attempt=3, actor="job", correlation_id="r1", trigger="retry",
        queued_at=1.0, status=RunStatus.FAILED_PERMANENT, reason="exit_code", error="boom",
        exit_code=3, started_at=2.0, finished_at=3.5, duration_ms=1500.0, stderr_tail="err",
        output_json='{"x": 1}', code_sha256="abc", code_history_id="h1", code_source="file",
        worker_id="w1",
    )  # fmt: skip
    return RunRecord(**{**base, **kw})  # type: ignore[arg-type]


def test_every_outcome_field_but_output_and_attempts_is_a_row_field() -> None:
    row_fields = {f.name for f in fields(RunRecord)}
    assert OUTCOME_FIELDS - row_fields == {"output", "attempts"}


def test_the_outcome_of_a_row_round_trips_through_the_wire() -> None:
    outcome = outcome_of(row())
    assert outcome.output == {"x": 1} and outcome.attempts == 3 and outcome.error == "boom"
    wire = orjson.loads(orjson.dumps(outcome.as_dict()))
    assert RunOutcome.from_dict(wire) == outcome


def test_an_unknown_field_is_refused_not_dropped() -> None:
    data = outcome_of(row()).as_dict() | {"surprise": 1}
    with pytest.raises(ProtocolError, match="surprise"):
        RunOutcome.from_dict(data)


def test_a_missing_required_field_is_refused() -> None:
    with pytest.raises(ProtocolError):
        RunOutcome.from_dict({"run_id": "r1", "actor": "job"})


def test_one_status_enum_for_rows_results_and_outcomes() -> None:
    # what workers send: a cancelled run's worker reports it killed the run for the cancel
    assert {"succeeded", "failed_retryable", "failed_permanent", "cancelled"} == STATUSES
    assert [s.value for s in RunStatus] == [
        "queued", "running", "succeeded", "failed_retryable", "failed_permanent", "cancelled",
    ]  # fmt: skip
