"""The store contract: every backend must pass this suite unchanged (see ``conftest.store``)."""

import dataclasses
from typing import Any

import orjson
import pytest

from protocol.outcomes import RunStatus
from supervisor.records import ActorRecord, Event, Record, RunRecord, TaskState
from supervisor.store.base import Store, StoreError, StoreUnavailable
from tests.helpers import T0, event
from tests.helpers import run_record as run


def state(actor: str = "backup", **changes: Any) -> TaskState:
    return TaskState(**{"actor": actor, "updated_at": T0, **changes})


def test_run_with_every_field_set_round_trips(store: Store) -> None:
    big_input = orjson.dumps({"rows": [{"i": i, "text": "ä€𝄞" * 10} for i in range(20_000)]})
    full = RunRecord(
        run_id="run-ünï-1",
        attempt=3,
        actor="backup-é",
        correlation_id="corr-👀",
        trigger="retry",
        status=RunStatus.FAILED_PERMANENT,
        reason="invalid_output",
        input_json=big_input.decode(),
        queued_at=T0,
        scheduled_for=T0 - 0.000001,
        started_at=T0 + 0.000002,
        finished_at=T0 + 12.345678,
        duration_ms=12_345.678,
        exit_code=2,
        signal=9,
        output_json='{"ok": false, "msg": "日本語"}',
        stderr_tail="Traceback…\nValueError: ☃\n",
        error="script printed invalid JSON",
        code_sha256="ab" * 32,
        worker_id="worker-7",
        idempotency_key="key-∑",
        utime_s=1.25,
        stime_s=0.5,
        maxrss_kb=123_456,
    )
    store.write_batch([full])

    assert store.list_runs(run_id=full.run_id) == [full]
    assert len(full.input_json) > 1_000_000


def test_run_with_defaults_and_nones_round_trips(store: Store) -> None:
    minimal = run()
    store.write_batch([minimal])

    (stored,) = store.list_runs()
    assert stored == minimal
    assert stored.started_at is None and stored.output_json is None and stored.exit_code is None
    assert stored.status == RunStatus.QUEUED


def test_an_attempts_later_rows_change_its_state_never_its_identity(store: Store) -> None:
    """The upsert leaves out the columns an attempt is queued with (so SQLite need not rewrite
    the indexes on them): a later row moves status and results, and the first row's actor,
    input, times and keys stay."""
    queued = run(input_json='{"a": 1}', idempotency_key="k1", scheduled_for=T0 + 5)
    store.write_batch([queued])
    later = dataclasses.replace(
        queued, status=RunStatus.SUCCEEDED, started_at=T0 + 6, finished_at=T0 + 7,
        output_json="{}", actor="other", input_json="{}", queued_at=T0 + 1, idempotency_key="k2",
        scheduled_for=None, correlation_id="c2", trigger="retry",
    )  # fmt: skip
    store.write_batch([later])
    (stored,) = store.list_runs()
    assert (stored.status, stored.started_at, stored.finished_at, stored.output_json) == (
        RunStatus.SUCCEEDED, T0 + 6, T0 + 7, "{}",
    )  # fmt: skip
    identity = ("actor", "input_json", "queued_at", "idempotency_key", "scheduled_for",
                "correlation_id", "trigger")  # fmt: skip
    assert [getattr(stored, f) for f in identity] == [getattr(queued, f) for f in identity]


def test_event_round_trips_with_nested_unicode_metadata(store: Store) -> None:
    metadata = {
        "conversation_id": "conv-1",
        "nested": {"list": [1, 2.5, None, True, "ünï"], "empty": {}},
        "big": ["x" * 100] * 5_000,
    }
    with_meta = event("e1", metadata=metadata, correlation_id="c-€")
    bare = event("e2", correlation_id=None, created_at=T0 + 0.000001)
    store.write_batch([with_meta, bare])

    assert store.list_events() == [with_meta, bare]


def test_task_state_round_trips(store: Store) -> None:
    paused = state(
        "a",
        last_run_at=T0 - 60.5,
        next_run_at=T0 + 59.999999,
        consecutive_failures=5,
        is_paused=True,
        paused_reason="circuit breaker: 5 failures",
        metadata={"window": [1, 2], "note": "ß"},
    )
    fresh = state("b")
    store.write_batch([paused, fresh])

    assert store.load_task_states() == {"a": paused, "b": fresh}


def test_empty_batch_is_a_no_op(store: Store) -> None:
    store.write_batch([])
    assert store.list_runs() == [] and store.list_events() == []


def test_upsert_within_one_batch_keeps_the_last_version(store: Store) -> None:
    queued = run()
    running = dataclasses.replace(queued, status=RunStatus.RUNNING, started_at=T0 + 1)
    done = dataclasses.replace(running, status=RunStatus.SUCCEEDED, finished_at=T0 + 2)
    store.write_batch([queued, state(consecutive_failures=1), running, done, state()])

    assert store.list_runs() == [done]
    assert store.load_task_states() == {"backup": state()}


def test_upsert_across_batches_keeps_the_last_version(store: Store) -> None:
    queued = run(idempotency_key="k")
    done = dataclasses.replace(queued, status=RunStatus.SUCCEEDED, output_json='{"n": 1}')
    store.write_batch([queued, state(is_paused=True)])
    store.write_batch([done, state(is_paused=False, updated_at=T0 + 5)])

    assert store.list_runs() == [done]
    assert store.load_task_states()["backup"].is_paused is False
    assert store.unfinished_runs() == []


def test_replayed_batch_changes_nothing(store: Store) -> None:
    batch: list[Record] = [
        run(),
        event("e1"),
        event("e2", event_type="run_started", created_at=T0 + 1),
        state(consecutive_failures=2),
    ]
    store.write_batch(batch)
    before = (store.list_runs(), store.list_events(), store.load_task_states())

    store.write_batch(batch)
    store.write_batch([event("e1", metadata={"replayed": True})])  # same id, different body

    assert (store.list_runs(), store.list_events(), store.load_task_states()) == before


def test_duplicate_event_ids_within_one_batch_are_stored_once(store: Store) -> None:
    store.write_batch([event("e1"), event("e1", event_type="other"), event("e2")])

    assert [(e.event_id, e.event_type) for e in store.list_events()] == [
        ("e1", "run_queued"),
        ("e2", "run_queued"),
    ]


def test_list_runs_newest_first_with_filters_and_limit(store: Store) -> None:
    store.write_batch(
        [
            run("r1", 1, queued_at=T0),
            run("r1", 2, queued_at=T0 + 10),
            run("r2", 1, actor="mail", queued_at=T0 + 5),
            run("r3", 1, queued_at=T0 + 20),
            run("r4", 1, actor="mail", queued_at=T0 + 0.000001),
        ]
    )

    def keys(runs: list[RunRecord]) -> list[tuple[str, int]]:
        return [r.key for r in runs]

    assert keys(store.list_runs()) == [("r3", 1), ("r1", 2), ("r2", 1), ("r4", 1), ("r1", 1)]
    assert keys(store.list_runs(actor="backup")) == [("r3", 1), ("r1", 2), ("r1", 1)]
    assert keys(store.list_runs(run_id="r1")) == [("r1", 2), ("r1", 1)]
    assert keys(store.list_runs(actor="mail", run_id="r1")) == []
    assert keys(store.list_runs(limit=2)) == [("r3", 1), ("r1", 2)]
    assert store.list_runs(limit=0) == []
    assert store.list_runs(actor="nobody") == []
    with pytest.raises(ValueError, match="limit must be >= 0"):
        store.list_runs(limit=-1)
    with pytest.raises(ValueError, match="limit must be >= 0"):
        store.list_events(limit=-1)


def test_list_runs_orders_attempts_of_one_run_by_attempt_when_queued_together(
    store: Store,
) -> None:
    store.write_batch([run("r1", 1), run("r1", 3), run("r1", 2)])
    assert [r.attempt for r in store.list_runs(run_id="r1")] == [3, 2, 1]


def test_list_events_oldest_first_with_filters(store: Store) -> None:
    store.write_batch(
        [
            event("late", created_at=T0 + 2),
            event("a2", aggregate_id="r2", correlation_id="c2", created_at=T0 + 1),
            event("tie-1", created_at=T0 + 1),
            event("tie-2", created_at=T0 + 1),  # equal time: insertion order decides
            event("actor", aggregate_type="actor", aggregate_id="backup", created_at=T0),
            event("early", created_at=T0 - 0.000001),
        ]
    )

    def ids(events: list[Event]) -> list[str]:
        return [e.event_id for e in events]

    assert ids(store.list_events()) == ["early", "actor", "a2", "tie-1", "tie-2", "late"]
    assert ids(store.list_events(aggregate_type="run", aggregate_id="r1")) == [
        "early",
        "tie-1",
        "tie-2",
        "late",
    ]
    assert ids(store.list_events(aggregate_type="actor")) == ["actor"]
    assert ids(store.list_events(correlation_id="c2")) == ["a2"]
    assert ids(store.list_events(since=T0 + 1)) == ["a2", "tie-1", "tie-2", "late"]  # inclusive
    assert ids(store.list_events(since=T0 + 1, aggregate_id="r1", limit=2)) == ["tie-1", "tie-2"]
    assert ids(store.list_events(since=T0 + 2.000001)) == []
    assert ids(store.list_events(limit=1)) == ["early"]


def test_unfinished_runs_are_queued_or_running_oldest_first(store: Store) -> None:
    store.write_batch(
        [
            run("done", status=RunStatus.SUCCEEDED, queued_at=T0 - 30),
            run("running", status=RunStatus.RUNNING, queued_at=T0 + 1, started_at=T0 + 2),
            run("queued", queued_at=T0),
            run("retry-later", status=RunStatus.FAILED_RETRYABLE, queued_at=T0 - 20),
            run("gave-up", status=RunStatus.FAILED_PERMANENT, queued_at=T0 - 10),
        ]
    )

    assert [r.run_id for r in store.unfinished_runs()] == ["queued", "running"]


def test_unfinished_run_leaves_the_list_when_it_finishes(store: Store) -> None:
    store.write_batch([run(status=RunStatus.RUNNING)])
    store.write_batch([run(status=RunStatus.SUCCEEDED)])
    assert store.unfinished_runs() == []


def test_idempotency_keys_since_a_time(store: Store) -> None:
    store.write_batch(
        [
            run("old", idempotency_key="k1", queued_at=T0 - 100),
            run("edge", idempotency_key="k2", queued_at=T0),
            run("new", idempotency_key="k3", actor="mail", queued_at=T0 + 1),
            run("nokey", queued_at=T0 + 2),
            run("edge", attempt=2, idempotency_key="k2", queued_at=T0 + 3),
        ]
    )

    assert store.idempotency_keys(since=T0) == {("backup", "k2"): "edge", ("mail", "k3"): "new"}
    assert store.idempotency_keys(since=T0 + 10) == {}


def test_load_task_states_empty_then_one_per_actor(store: Store) -> None:
    assert store.load_task_states() == {}
    store.write_batch([state("a"), state("b"), state("a", consecutive_failures=1)])

    states = store.load_task_states()
    assert sorted(states) == ["a", "b"]
    assert states["a"].consecutive_failures == 1


@pytest.mark.parametrize("bad_position", ["first_run", "last_run", "event"])
def test_failing_batch_writes_nothing(store: Store, bad_position: str) -> None:
    store.write_batch([run("kept"), event("kept")])
    bad_run = run("bad", actor=None)  # violates NOT NULL in the middle of the transaction
    bad_event = event("bad", event_type=None)
    good: list[Record] = [run("r2"), state(), event("e2"), run("r3")]
    batch: list[Record] = {
        "first_run": [bad_run, *good],
        "last_run": [*good, bad_run],
        "event": [*good, bad_event],
    }[bad_position]

    with pytest.raises(StoreError) as raised:
        store.write_batch(batch)

    assert not isinstance(raised.value, StoreUnavailable)  # bad data: retrying will not help
    assert [r.run_id for r in store.list_runs()] == ["kept"]
    assert [e.event_id for e in store.list_events()] == ["kept"]
    assert store.load_task_states() == {}


def test_unencodable_record_fails_the_batch_without_writing(store: Store) -> None:
    with pytest.raises(StoreError):
        store.write_batch([run(), event("e1", metadata={"bad": object()})])
    assert store.list_runs() == [] and store.list_events() == []


def test_store_is_unusable_after_close(store: Store) -> None:
    store.close()
    with pytest.raises(StoreError):
        store.list_runs()
    with pytest.raises(StoreError):
        store.write_batch([run()])
    store.close()  # closing twice is harmless


def actor(name: str = "backup", **changes: Any) -> ActorRecord:
    fields: dict[str, Any] = {
        "name": name,
        "script_path": f"/srv/actors/{name}.py",
        "code_sha256": "cd" * 32,
        "updated_at": T0,
    }
    fields.update(changes)
    return ActorRecord(**fields)


def test_migrate_again_applies_nothing(store: Store) -> None:
    assert store.migrate() == []


def test_actors_round_trip_and_upsert_by_name(store: Store) -> None:
    scheduled = actor(
        schedule={"type": "cron", "expression": "*/5 * * * *", "timezone": "Europe/Berlin"},
        config={"timeout_s": 30.0, "limits": {"cpu_s": 10, "memory_mb": None}, "env": {}},
    )
    on_demand = actor("mail", schedule=None)
    store.write_batch([scheduled, on_demand])
    assert store.load_actors() == {"backup": scheduled, "mail": on_demand}

    redeployed = dataclasses.replace(scheduled, code_sha256="ef" * 32, updated_at=T0 + 60)
    store.write_batch([redeployed, dataclasses.replace(on_demand, config={"a": 1})])
    store.write_batch([redeployed])
    assert store.load_actors()["backup"] == redeployed
    assert store.load_actors()["mail"].config == {"a": 1}


def test_json_numbers_keep_their_value_and_type(store: Store) -> None:
    numbers = {
        "max_i64": 2**63 - 1,
        "min_i64": -(2**63),
        "max_u64": 2**64 - 1,
        "third": 0.1 + 0.2,
        "whole_float": 3.0,
        "big_float": 1e20,
        "huge_float": 1e300,
        "tiny_float": 5e-324,
        "negative": -1.5,
    }
    store.write_batch([event("e1", metadata=numbers), state(metadata={"n": numbers})])

    (stored,) = store.list_events()
    assert stored.metadata == numbers
    assert {k: type(v) for k, v in stored.metadata.items()} == {
        k: type(v) for k, v in numbers.items()
    }
    assert store.load_task_states()["backup"].metadata == {"n": numbers}


def test_nul_characters_become_the_replacement_character_everywhere(store: Store) -> None:
    """PostgreSQL cannot store NUL; every backend replaces it, so they read back alike."""
    nul_run = run(
        "r\x00",
        stderr_tail="binary\x00garbage",
        error="e\x00",
        input_json='{"s": "\\u0000"}',  # escaped inside JSON text: kept as written
        output_json='["\\u0000"]',
    )
    nul_event = event("e\x00", correlation_id="c\x00", metadata={"k\x00": ["v\x00", {"x": "\x00"}]})
    store.write_batch([nul_run, nul_event, state(paused_reason="p\x00", metadata={"m": "\x00"})])

    (stored_run,) = store.list_runs()
    assert stored_run.run_id == "r\ufffd"
    assert stored_run.stderr_tail == "binary\ufffdgarbage" and stored_run.error == "e\ufffd"
    assert stored_run.input_json == '{"s": "\\u0000"}' and stored_run.output_json == '["\\u0000"]'
    (stored_event,) = store.list_events()
    assert (stored_event.event_id, stored_event.correlation_id) == ("e\ufffd", "c\ufffd")
    assert stored_event.metadata == {"k\ufffd": ["v\ufffd", {"x": "\ufffd"}]}
    stored_state = store.load_task_states()["backup"]
    assert (stored_state.paused_reason, stored_state.metadata) == ("p\ufffd", {"m": "\ufffd"})


def test_a_big_batch_of_awkward_events_reads_back_like_small_ones(store: Store) -> None:
    """Big batches take the bulk path (COPY on PostgreSQL): values must come back the same."""
    awkward = [
        event("nul\x00", aggregate_id="a\x00", correlation_id=None, metadata={"k\x00": "\x00"}),
        event("astral", aggregate_id="🦀", metadata={"s": "ä🦀\u2028", "nested": [1, None, 2.5]}),
        event("old", created_at=-86_400.000001),  # before 1970, microseconds kept
        event("far", created_at=253_402_300_799.999),  # 9999-12-31T23:59:59.999Z
        event("empty", event_type="", aggregate_type="", aggregate_id="", metadata={}),
    ]
    filler = [event(f"f{n:02}", created_at=T0 + n) for n in range(40)]
    store.write_batch([*awkward, *filler])

    stored = {e.event_id: e for e in store.list_events()}
    assert len(stored) == 45
    assert stored["nul\ufffd"].aggregate_id == "a\ufffd"
    assert stored["nul\ufffd"].correlation_id is None
    assert stored["nul\ufffd"].metadata == {"k\ufffd": "\ufffd"}
    assert stored["astral"].aggregate_id == "🦀"
    assert stored["astral"].metadata == {"s": "ä🦀\u2028", "nested": [1, None, 2.5]}
    assert stored["old"].created_at == pytest.approx(-86_400.000001, abs=1e-7)
    assert stored["far"].created_at == pytest.approx(253_402_300_799.999, abs=1e-6)
    assert (stored["empty"].event_type, stored["empty"].metadata) == ("", {})
    assert [stored[f"f{n:02}"].created_at for n in range(40)] == [T0 + n for n in range(40)]


@pytest.mark.parametrize("created_at", [float("nan"), float("inf"), 1e13])
def test_an_event_time_out_of_range_fails_a_big_batch_without_writing(
    store: Store, created_at: float
) -> None:
    batch = [run(), *(event(f"e{n}") for n in range(30)), event("bad", created_at=created_at)]
    with pytest.raises(StoreError, match="cannot be encoded"):
        store.write_batch(batch)
    assert store.list_runs() == [] and store.list_events() == []


def test_text_ties_are_ordered_by_code_point_not_by_locale(store: Store) -> None:
    ids = ["a", "B", "_", "Z", "ä", "b"]
    store.write_batch([run(run_id) for run_id in ids])  # equal queued_at and attempt

    assert [r.run_id for r in store.list_runs()] == sorted(ids, reverse=True)
    store.write_batch([run(run_id, status=RunStatus.RUNNING) for run_id in ids])
    assert [r.run_id for r in store.unfinished_runs()] == sorted(ids)


def test_no_connection_is_held_between_calls(store: Store) -> None:
    store.write_batch([run(), event("e1")])
    store.list_runs()
    with pytest.raises(StoreError):
        store.write_batch([run("bad", actor=None)])
    assert store.connections_in_use() == 0
