"""The workflow engine with fake ports and clock: order, waves, policies, pause, snapshots and
the rebuild from a snapshot plus later events."""

from dataclasses import dataclass, field
from typing import Any

from protocol.outcomes import RunStatus
from supervisor import events
from supervisor.records import Event, Record, RunRecord
from supervisor.workflows.config import WorkflowConfig
from supervisor.workflows.engine import ENDED, Item, ItemStatus, WorkflowRun
from supervisor.workflows.records import WorkflowSnapshot
from supervisor.workflows.replay import rebuild, settle
from tests.unit.fakes import FakeClock


@dataclass
class Ports:
    records: list[Record] = field(default_factory=list)
    submitted: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    paused_actors: dict[str, str] = field(default_factory=dict)
    room: int = 1_000_000

    def submit(
        self, actor: str, input_json: str, correlation_id: str, meta: dict[str, Any]
    ) -> str | None:
        if self.room <= 0:
            return None
        self.room -= 1
        run_id = f"run-{len(self.submitted)}"
        self.submitted.append((actor, input_json, meta))
        record = RunRecord(run_id=run_id, attempt=1, actor=actor, correlation_id=correlation_id,
                           trigger="workflow", input_json=input_json, queued_at=0.0)  # fmt: skip
        self.records.append(events.run_queued(record, **meta))
        return run_id

    def paused(self, actor: str) -> str | None:
        return self.paused_actors.get(actor)

    def put(self, record: Record) -> int:
        self.records.append(record)
        return len(self.records)

    def types(self) -> list[str]:
        return [r.event_type for r in self.records if isinstance(r, Event)]

    def own(self, kind: str) -> list[Event]:
        return [r for r in self.records if isinstance(r, Event) and r.event_type == kind]


def config(**changes: Any) -> WorkflowConfig:
    values: dict[str, Any] = {"name": "w", "steps": ("a", "b", "c"), "chunk_size": 100}
    values.update(changes)
    return WorkflowConfig(**values)


def new_run(ports: Ports, items: int = 3, max_parallel: int = 100, **changes: Any) -> WorkflowRun:
    pairs = [(f"i{n}", f'{{"id": "i{n}"}}') for n in range(items)]
    run = WorkflowRun.create(config(**changes), pairs, ports=ports, clock=FakeClock(),
                             max_parallel=max_parallel)  # fmt: skip
    run.start()
    run.pump()
    return run


def finish(ports: Ports, run: WorkflowRun, run_id: str, *, ok: bool = True, output: str = "{}",
           attempt: int = 1) -> None:  # fmt: skip
    actor, text, meta = ports.submitted[int(run_id.split("-")[1])]
    record = RunRecord(
        run_id=run_id, attempt=attempt, actor=actor, correlation_id=run.id, trigger="workflow",
        input_json=text, queued_at=0.0, output_json=output if ok else None,
        status=RunStatus.SUCCEEDED if ok else RunStatus.FAILED_PERMANENT,
        reason=None if ok else "exit_code", error=None if ok else "exit 1",
    )  # fmt: skip
    ports.records.append(events.run_finished(record, will_retry=False, **meta))
    run.on_final(record)


def drain(ports: Ports, run: WorkflowRun) -> None:
    """Finish every step run in flight with output = input + the step's actor, until done."""
    while run.by_run:
        for run_id, item in list(run.by_run.items()):
            actor, text, _ = ports.submitted[int(run_id.split("-")[1])]
            finish(ports, run, run_id, output=text[:-1] + f', "{actor}": {item.step}}}')


def test_items_go_through_the_steps_in_order_and_each_step_gets_the_last_output() -> None:
    ports = Ports()
    run = new_run(ports, items=2)
    drain(ports, run)

    by_item: dict[str, list[tuple[str, int, str]]] = {}
    for actor, text, meta in ports.submitted:
        by_item.setdefault(meta["conversation_id"], []).append(
            (actor, meta["execution_order"], text)
        )
    assert by_item["i0"] == [
        ("a", 0, '{"id": "i0"}'),
        ("b", 1, '{"id": "i0", "a": 0}'),
        ("c", 2, '{"id": "i0", "a": 0, "b": 1}'),
    ]
    assert run.status == "succeeded" and run.finished
    assert [e.metadata["item"] for e in ports.own("item_succeeded")] == ["i0", "i1"]
    (done,) = ports.own("workflow_finished")
    assert (done.metadata["succeeded"], done.metadata["failed"], done.metadata["items"]) == (
        2,
        0,
        2,
    )
    assert "duration_s" in done.metadata


def test_waves_never_exceed_chunk_size_nor_max_parallel() -> None:
    ports = Ports()
    run = new_run(ports, items=7, chunk_size=3, max_parallel=2, steps=("a",))
    peak, waves_seen = 0, []
    while run.by_run:
        peak = max(peak, run.in_flight())
        wave = {it.item_id for it in run.wave_items()}
        assert all(item.item_id in wave for item in run.by_run.values())
        waves_seen.append(run.header.wave)
        finish(ports, run, next(iter(run.by_run)))
    assert peak == 2
    assert sorted(set(waves_seen)) == [0, 1, 2]
    assert ports.types().count("wave_started") == 2  # waves 1 and 2 (0 starts with the run)
    assert ports.types().count("wave_finished") == 3
    assert run.status == "succeeded"


def test_continue_policy_fails_the_item_and_goes_on() -> None:
    ports = Ports()
    run = new_run(ports, items=3, steps=("a", "b"))
    finish(ports, run, "run-1", ok=False)  # item i1 fails at step a
    drain(ports, run)
    assert [e.metadata["item"] for e in ports.own("item_failed")] == ["i1"]
    assert ports.own("item_failed")[0].metadata["step"] == 0
    assert run.status == "failed" and run.header.succeeded == 2 and run.header.failed == 1


def test_stop_policy_stops_the_run_and_fails_the_items_left_once() -> None:
    ports = Ports()
    run = new_run(ports, items=5, max_parallel=2, steps=("a", "b"), on_item_failure="stop")
    finish(ports, run, "run-0", ok=False)  # i0 fails; i1 is in flight
    assert run.status == "stopped"
    assert not ports.own("workflow_finished")  # i1 is still running
    finish(ports, run, "run-1")  # its step a succeeds, but no step b follows
    assert run.finished and run.status == "stopped"
    failed = [e.metadata["item"] for e in ports.own("item_failed")]
    assert sorted(failed) == ["i0", "i1", "i2", "i3", "i4"] and len(set(failed)) == 5
    assert len(ports.submitted) == 2


def test_a_paused_step_actor_pauses_the_run_until_it_is_resumed() -> None:
    ports = Ports()
    run = new_run(ports, items=2, steps=("a", "b"))
    ports.paused_actors["b"] = "circuit breaker"
    finish(ports, run, "run-0")
    assert run.status == "paused" and "circuit breaker" in (run.header.paused_reason or "")
    finish(ports, run, "run-1")
    assert len(ports.submitted) == 2  # nothing of step b
    del ports.paused_actors["b"]
    run.pump()
    assert run.status == "running" and len(ports.submitted) == 4
    drain(ports, run)
    assert ports.types().count("workflow_paused") == 1 and "workflow_resumed" in ports.types()
    assert run.status == "succeeded"


def test_a_paused_run_still_finishes_when_its_last_item_ends() -> None:
    ports = Ports()
    run = new_run(ports, items=1, steps=("a", "b"))
    ports.paused_actors["b"] = "circuit breaker"
    finish(ports, run, "run-0", ok=False)  # the only item fails; b stays paused
    assert run.finished and run.status == "failed"


def test_no_room_waits_and_cancel_fails_what_has_not_run() -> None:
    ports = Ports(room=1)
    run = new_run(ports, items=3, steps=("a",))
    assert len(ports.submitted) == 1
    assert run.cancel("by hand")
    assert run.status == "cancelled" and not run.finished
    finish(ports, run, "run-0")  # the last step: that item still succeeds
    assert run.finished and run.header.succeeded == 1 and run.header.failed == 2


def test_each_item_end_writes_the_header_with_current_counts() -> None:
    ports = Ports()
    run = new_run(ports, items=2, steps=("a",), snapshot_every=1000)  # no snapshot meanwhile
    finish(ports, run, "run-0")
    finish(ports, run, "run-1", ok=False)
    kinds = ("item_succeeded", "item_failed")
    ends = [n for n, r in enumerate(ports.records)
            if isinstance(r, Event) and r.event_type in kinds]  # fmt: skip
    headers = [ports.records[n + 1] for n in ends]  # right after each item's final event
    assert [(h.succeeded, h.failed) for h in headers] == [(1, 0), (1, 1)]  # type: ignore[union-attr]


def test_snapshots_every_n_events_hold_only_the_started_items() -> None:
    ports = Ports()
    run = new_run(ports, items=20, chunk_size=5, max_parallel=5, snapshot_every=4)
    drain(ports, run)
    snaps = [r for r in ports.records if isinstance(r, WorkflowSnapshot)]
    events_total = sum(1 for r in ports.records if isinstance(r, Event))
    assert len(snaps) >= events_total // 4 - 5
    assert all(len(s.state["items"]) <= 5 for s in snaps)
    assert snaps[-1].state["ended"] == [[0, 20]]


def state(item: Item) -> tuple[Any, ...]:
    """What a rebuild must restore (an ended item's step no longer matters)."""
    step = None if item.status in ENDED else item.step
    return (step, item.status, item.run_id, item.next_input)


def test_rebuild_from_a_snapshot_and_later_events_continues_exactly_where_it_stopped() -> None:
    ports = Ports()
    run = new_run(ports, items=6, chunk_size=3, max_parallel=2, snapshot_every=5)
    for _ in range(7):  # part of the way
        finish(ports, run, next(iter(run.by_run)), output='{"k": 1}')
    snapshot = [r for r in ports.records if isinstance(r, WorkflowSnapshot)][-1]
    at = ports.records.index(snapshot)
    later = [r for r in ports.records[at:] if isinstance(r, Event)]
    assert len(later) <= 5 + 2 * 2  # snapshot_every, plus the in-flight runs' events
    items_rows = [r for r in ports.records if type(r).__name__ == "WorkflowItemRecord"]
    before = {i.item_id: state(i) for i in run.items}

    fresh = Ports()
    fresh.submitted = list(ports.submitted)
    replayed = rebuild(run.header, items_rows, snapshot, later, ports=fresh, clock=FakeClock())  # type: ignore[arg-type]
    settle(replayed, lambda run_id: '{"k": 1}')
    again = replayed.run
    after = {i.item_id: state(i) for i in again.items}
    assert after == before
    drain(fresh, again)
    ended = [e.metadata["item"] for e in ports.own("item_succeeded") + fresh.own("item_succeeded")]
    assert sorted(ended) == [f"i{n}" for n in range(6)]  # each exactly once
    assert again.status == "succeeded"
    assert all(i.status == ItemStatus.SUCCEEDED for i in again.items)


def test_rebuild_keeps_failed_items_failed_and_counts_them() -> None:
    ports = Ports()
    run = new_run(ports, items=4, chunk_size=2, max_parallel=2, snapshot_every=3, steps=("a",))
    finish(ports, run, "run-0", ok=False)
    finish(ports, run, "run-1")
    finish(ports, run, "run-2")  # wave 1 under way: i3 in flight
    snapshot = [r for r in ports.records if isinstance(r, WorkflowSnapshot)][-1]
    later = [r for r in ports.records[ports.records.index(snapshot) :] if isinstance(r, Event)]
    rows = [r for r in ports.records if type(r).__name__ == "WorkflowItemRecord"]
    fresh = Ports()
    fresh.submitted = list(ports.submitted)
    replayed = rebuild(run.header, rows, snapshot, later, ports=fresh, clock=FakeClock())  # type: ignore[arg-type]
    settle(replayed, lambda run_id: "{}")
    again = replayed.run
    assert (again.header.succeeded, again.header.failed) == (2, 1)
    assert again.snapshot_state()["failed_items"] == [0]
    drain(fresh, again)
    assert again.status == "failed" and (again.header.succeeded, again.header.failed) == (3, 1)
