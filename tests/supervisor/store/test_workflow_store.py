"""Workflow runs, items, snapshots, the conversation index and the workflow_steps view, on
both stores (the ``store`` fixture is parametrized by backend)."""

import dataclasses

import pytest

from protocol.outcomes import RunStatus
from supervisor import events
from supervisor.records import RunRecord
from supervisor.spool import decode_batch, encode_batch
from supervisor.store.base import IdNotResolved, Store
from supervisor.workflows.records import WorkflowItemRecord, WorkflowRunRecord, WorkflowSnapshot
from tests.helpers import T0, run_record

WF = "wf-1"


def header(**changes: object) -> WorkflowRunRecord:
    fields: dict[str, object] = dict(
        workflow_run_id=WF, workflow="postings", status="running", steps=["a", "b"],
        chunk_size=2, max_parallel=2, on_item_failure="continue", snapshot_every=10,
        item_count=2, waves=1, created_at=T0, updated_at=T0, epoch=3,
    )  # fmt: skip
    fields.update(changes)
    return WorkflowRunRecord(**fields)  # type: ignore[arg-type]


def items() -> list[WorkflowItemRecord]:
    return [
        WorkflowItemRecord(
            workflow_run_id=WF,
            item_id=f"item-{i}",
            position=i,
            input_json=f'{{"n": {i}}}',
            created_at=T0,
        )
        for i in range(2)
    ]


def test_runs_items_and_snapshots_round_trip_and_replay_harmlessly(store: Store) -> None:
    snap = WorkflowSnapshot(
        workflow_run_id=WF, seq=1, events_seen=10, state={"done": [[0, 1]], "items": {}},
        created_at=T0 + 1,
    )  # fmt: skip
    batch = [header(), *items(), snap]
    store.write_batch(batch)
    store.write_batch(decode_batch(encode_batch(batch)))  # a spooled replay changes nothing

    assert store.workflow_runs() == [header()]
    assert store.workflow_runs(active_only=True) == [header()]
    assert store.workflow_items(WF) == items()
    assert store.latest_workflow_snapshot(WF) == snap
    assert store.workflow_snapshot_count(WF) == 1
    assert store.workflow_run(WF) == header()
    assert store.workflow_run("wf-2") is None


def test_workflow_run_ids_resolve_by_unique_prefix_like_run_ids(store: Store) -> None:
    a, b, c = "0190aa00cafe0001", "0190aa00cafe0002", "0190bb00beef0001"
    store.write_batch([header(workflow_run_id=i) for i in (a, b, c)])

    assert store.resolve_id("workflow_run", "0190bb00") == c
    assert store.resolve_id("workflow_run", a) == a
    with pytest.raises(IdNotResolved) as short:
        store.resolve_id("workflow_run", "0190bb0")
    assert short.value.code == "bad_id" and "too short" in short.value.message
    with pytest.raises(IdNotResolved) as unknown:
        store.resolve_id("workflow_run", "0190cc00")
    assert unknown.value.code == "unknown_id"
    assert unknown.value.message == "no workflow run id starts with '0190cc00'"
    with pytest.raises(IdNotResolved) as ambiguous:
        store.resolve_id("workflow_run", "0190aa00cafe")
    assert ambiguous.value.code == "ambiguous_id"
    assert ambiguous.value.candidates == (a, b)


def test_a_batch_of_headers_of_one_run_leaves_its_last(store: Store) -> None:
    store.write_batch([header(), *items(), header(succeeded=1), header(succeeded=1, failed=1)])
    assert store.workflow_run(WF) == header(succeeded=1, failed=1)
    assert store.workflow_items(WF) == items()


def test_header_upserts_and_is_fenced_by_epoch(store: Store) -> None:
    store.write_batch([header()])
    done = header(status="succeeded", succeeded=2, finished_at=T0 + 5, updated_at=T0 + 5)
    store.write_batch([done])
    store.write_batch([header(status="running", epoch=2)])  # a stale leader's write

    assert store.workflow_runs() == [done]
    assert store.workflow_runs(active_only=True) == []


def test_conversation_events_and_the_steps_view(store: Store) -> None:
    rows: list[object] = []
    for order, actor in enumerate(("a", "b")):
        queued = run_record(f"r{order}", actor=actor, correlation_id=WF, queued_at=T0 + order)
        done = dataclasses.replace(
            queued, status=RunStatus.SUCCEEDED, finished_at=T0 + order + 0.5, duration_ms=500.0
        )
        meta = {"workflow": "postings", "workflow_run_id": WF, "conversation_id": "item-0",
                "execution_order": order}  # fmt: skip
        rows += [queued, events.run_queued(queued, **meta), done]
        rows.append(events.run_finished(done, will_retry=False, **meta))
    rows.append(events.run_queued(run_record("other", correlation_id="x")))
    store.write_batch(rows)  # type: ignore[arg-type]

    conversation = store.conversation_events("item-0")
    assert [e.event_type for e in conversation] == ["run_queued", "run_succeeded"] * 2
    assert [e.metadata["execution_order"] for e in conversation] == [0, 0, 1, 1]
    assert len(store.workflow_events(WF)) == 4
    later = store.workflow_events(WF, since=conversation[2].created_at)
    assert [e.event_id for e in later] == [e.event_id for e in conversation[2:]]

    steps = store.workflow_steps(WF)
    assert [(s["item_id"], s["step"], s["execution_order"], s["status"]) for s in steps] == [
        ("item-0", "a", 0, "succeeded"),
        ("item-0", "b", 1, "succeeded"),
    ]
    assert steps[1]["attempts"] == 1 and steps[1]["duration_ms"] == 500.0
    assert steps[1]["started"] == T0 + 1 and steps[1]["finished"] == T0 + 1.5


def test_steps_view_shows_the_latest_attempt(store: Store) -> None:
    first = run_record("r0", actor="a", correlation_id=WF)
    meta = {"workflow": "w", "workflow_run_id": WF, "conversation_id": "i", "execution_order": 0}
    failed = dataclasses.replace(first, status=RunStatus.FAILED_RETRYABLE)
    second: RunRecord = dataclasses.replace(first, attempt=2, status=RunStatus.SUCCEEDED)
    store.write_batch([first, events.run_queued(first, **meta), failed, second,
                       events.run_queued(second, **meta)])  # fmt: skip

    (step,) = store.workflow_steps(WF)
    assert (step["attempts"], step["status"]) == (2, "succeeded")
