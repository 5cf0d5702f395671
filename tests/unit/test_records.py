"""evolve: the run book's cheap copy of a run's row must be exactly dataclasses.replace."""

import dataclasses

import pytest

from supervisor.records import evolve
from tests.helpers import run_record


def test_evolve_equals_replace_and_leaves_the_original_alone() -> None:
    row = run_record(output_json='{"x": 1}', stderr_tail="err", epoch=2)
    changes = {"status": "running", "worker_id": "w0.1", "started_at": 5.0, "epoch": 3}
    new = evolve(row, **changes)
    assert new == dataclasses.replace(row, **changes)  # type: ignore[arg-type]
    assert new is not row and (row.status, row.worker_id, row.epoch) == ("queued", None, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        new.status = "queued"  # type: ignore[misc]


def test_evolve_refuses_a_name_that_is_not_a_field() -> None:
    with pytest.raises(AttributeError):
        evolve(run_record(), statuss="running")
