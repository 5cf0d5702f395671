"""The workflow book on a real run book with a fake clock and sink: a step moves on only once
its final outcome is committed, step runs carry the workflow's metadata, schedules fire."""

from pathlib import Path
from typing import Any

import orjson

from protocol.outcomes import RunStatus
from supervisor.records import Event
from supervisor.workflows.book import WorkflowBook, WorkflowRefused
from supervisor.workflows.engine import WorkflowRun
from tests.unit.fakes import Bench, bench, result

TOML = """
[[actors]]
name = "a"
script = "job.py"

[[actors]]
name = "b"
script = "job.py"

[[workflows]]
name = "w"
steps = ["a", "b"]
chunk_size = 2

[[workflows]]
name = "nightly"
steps = ["a"]
schedule = { type = "interval", seconds = 60 }
input = [{ id = "only" }]
"""


def setup(tmp_path: Path) -> tuple[Bench, WorkflowBook]:
    b = bench(tmp_path, TOML)
    from supervisor.config import load_config

    configs = load_config(tmp_path / "supervisor.toml", environ={}).workflows
    book = WorkflowBook(book=b.book, configs=lambda: configs, capacity=lambda: 4, clock=b.clock)
    return b, book


def run_once(b: Bench, output: dict[str, Any]) -> list[str]:
    """Dispatch what is ready to one worker each, and succeed each with ``output``."""
    sent = b.dispatch(*[f"w{n}" for n in range(len(b.book.ready))])
    for worker, message in sent:
        echoed = output | {"input": orjson.loads(message.input_json)}
        b.book.on_result(worker, result(message, worker, RunStatus.SUCCEEDED, output=echoed))
    return [message.actor for _, message in sent]


def test_acknowledged_once_committed_and_steps_move_on_only_after_commits(tmp_path: Path) -> None:
    b, book = setup(tmp_path)
    acks: list[WorkflowRun] = []
    run = book.start("w", [{"id": "x"}, {"id": "y"}], acks.append)
    assert acks == [] and not b.book.runs  # nothing before the run and its items are durable
    b.commit()
    assert acks == [run] and len(b.book.runs) == 2
    b.commit()
    assert run_once(b, {"step": "a"}) == ["a", "a"]
    assert not b.book.ready  # the outcomes are not committed yet: no step b
    b.commit()
    b.commit()
    assert run_once(b, {"step": "b"}) == ["b", "b"]
    b.commit()
    assert run.finished and run.status == "succeeded"
    queued = [r for r in b.sink.records if isinstance(r, Event) and r.event_type == "run_queued"]
    assert {(e.metadata["conversation_id"], e.metadata["execution_order"]) for e in queued} == {
        ("x", 0), ("y", 0), ("x", 1), ("y", 1),
    }  # fmt: skip
    assert all(e.correlation_id == run.id and e.metadata["workflow"] == "w" for e in queued)
    inputs = [orjson.loads(r.input_json) for r in b.sink.records
              if type(r).__name__ == "RunRecord" and r.actor == "b" and r.attempt == 1]  # fmt: skip
    assert inputs[0]["step"] == "a" and inputs[0]["input"]["id"] in ("x", "y")


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    _, book = setup(tmp_path)
    for items, code in (([], "bad_request"), ([{"id": 1}, {"id": "1"}], "bad_request"),
                        ([{"id": True}], "bad_request")):  # fmt: skip
        try:
            book.start("w", items, lambda run: None)
        except WorkflowRefused as exc:
            assert exc.code == code
        else:
            raise AssertionError(f"{items} was accepted")
    try:
        book.start("nope", [1], lambda run: None)
    except WorkflowRefused as exc:
        assert exc.code == "unknown_workflow" and "known: nightly, w" in str(exc)


def test_a_scheduled_workflow_fires_with_its_configured_items(tmp_path: Path) -> None:
    b, book = setup(tmp_path)
    book.tick(b.clock())  # an interval schedule is first due at start-up
    (run,) = book.runs.values()
    assert run.header.workflow == "nightly" and run.header.trigger == "schedule"
    assert [i.item_id for i in run.items] == ["only"]
    b.clock.advance(60)
    book.tick(b.clock())
    assert len(book.runs) == 1  # the previous one still runs: skipped


def test_cancel_cancels_the_step_runs_in_flight_through_the_run_book(tmp_path: Path) -> None:
    b, book = setup(tmp_path)
    run = book.start("w", [{"id": "x"}, {"id": "y"}, {"id": "z"}], lambda run: None)
    b.commit()
    b.commit()
    ((worker, running),) = b.dispatch("w0")  # x's step a runs; y's is queued; z waits
    kills: list[tuple[str, str, int]] = []

    def kill(worker_id: str, run_id: str, attempt: int) -> bool:
        kills.append((worker_id, run_id, attempt))
        return True

    reply = book.control("cancel", run.id, kill)
    assert (reply["status"], reply["changed"], reply["cancelled_steps"]) == ("cancelled", True, 2)
    assert kills == [(worker, running.run_id, 1)]
    assert not b.book.ready  # the queued step run will never start
    b.commit()
    b.book.on_result(worker, result(running, worker, RunStatus.CANCELLED, "cancelled"))
    b.commit()
    assert run.finished and run.status == "cancelled"
    # listed (finished) until its last rows commit: whoever sees it gone finds them stored
    assert [(p["workflow_run_id"], p["status"]) for p in book.progress()] == [(run.id, "cancelled")]
    b.commit()
    assert book.progress() == []
    finals = [
        r for r in b.sink.records if type(r).__name__ == "RunRecord" and r.finished_at is not None
    ]
    assert sorted(r.status for r in finals) == ["cancelled", "cancelled"]  # none retried
    ends = [r for r in b.sink.records if isinstance(r, Event) and r.event_type == "item_failed"]
    assert sorted((e.metadata["item"], e.metadata["reason"]) for e in ends) == [
        ("x", "cancelled"), ("y", "cancelled"), ("z", "cancelled"),
    ]  # fmt: skip
    (end,) = [r for r in b.sink.records
              if isinstance(r, Event) and r.event_type == "workflow_finished"]  # fmt: skip
    assert (end.metadata["status"], end.metadata["failed"]) == ("cancelled", 3)
    assert b.replies.sent == []  # nobody waits on a step run: no stray replies
    try:
        book.control("cancel", run.id, kill)
    except WorkflowRefused as exc:
        assert exc.code == "unknown_workflow_run"
    else:
        raise AssertionError("a finished workflow run was cancelled again")
