"""The read helpers of the HTTP process, on every backend: runs one per run, events newest
first with a cursor, and each actor's last run in one query."""

import time

from supervisor.records import Event, RunRecord
from supervisor.store.base import Store
from tests.supervisor.store.test_store_contract import T0, actor, event, run


def keys(runs: list[RunRecord]) -> list[tuple[str, int]]:
    return [r.key for r in runs]


def ids(events: list[Event]) -> list[str]:
    return [e.event_id for e in events]


def test_find_runs_latest_only_keeps_one_row_per_run(store: Store) -> None:
    store.write_batch(
        [
            run("r1", 1, queued_at=T0, status="failed_retryable"),
            run("r1", 2, queued_at=T0 + 10, status="succeeded"),
            run("r2", 1, actor="mail", queued_at=T0 + 5, status="succeeded"),
            run("r3", 1, queued_at=T0 + 20, status="running"),
        ]
    )
    assert keys(store.find_runs(latest_only=True)) == [("r3", 1), ("r1", 2), ("r2", 1)]
    assert keys(store.find_runs(latest_only=True, actor="backup")) == [("r3", 1), ("r1", 2)]
    # the status filter applies to the latest attempt: r1's first attempt does not count
    assert keys(store.find_runs(latest_only=True, status="failed_retryable")) == []
    assert keys(store.find_runs(latest_only=True, status="succeeded")) == [("r1", 2), ("r2", 1)]
    page = store.find_runs(latest_only=True, limit=1)
    last = page[-1]
    before = (last.queued_at, last.attempt, last.run_id)
    after = store.find_runs(latest_only=True, before=before, limit=5)
    assert keys(after) == [("r1", 2), ("r2", 1)]


def test_find_events_newest_first_with_a_cursor(store: Store) -> None:
    store.write_batch(
        [
            event("late", created_at=T0 + 2),
            event("a2", aggregate_id="r2", correlation_id="c2", created_at=T0 + 1),
            event("tie-1", created_at=T0 + 1),
            event("tie-2", created_at=T0 + 1),  # equal time: insertion order decides
            event("early", created_at=T0 - 0.000001),
        ]
    )
    assert ids(store.find_events()) == ["late", "tie-2", "tie-1", "a2", "early"]
    assert ids(store.find_events(limit=2)) == ["late", "tie-2"]
    assert ids(store.find_events(before="tie-2", limit=2)) == ["tie-1", "a2"]
    assert ids(store.find_events(before="a2")) == ["early"]
    assert ids(store.find_events(aggregate_id="r1", before="late")) == ["tie-2", "tie-1", "early"]
    assert ids(store.find_events(since=T0 + 1, before="tie-1")) == ["a2"]
    assert ids(store.find_events(correlation_id="c2")) == ["a2"]


def test_last_runs_gives_each_actors_latest_attempt(store: Store) -> None:
    store.write_batch(
        [
            actor("backup"),
            actor("mail"),
            actor("idle"),
            run("r1", 1, queued_at=T0, status="failed_retryable"),
            run("r1", 2, queued_at=T0 + 10, status="failed_permanent", reason="exit_code"),
            run("r0", 1, queued_at=T0 - 50, status="succeeded"),
            run("m1", 1, actor="mail", queued_at=T0 + 5, status="succeeded", finished_at=T0 + 6),
        ]
    )
    last = store.last_runs()
    assert sorted(last) == ["backup", "mail"]  # idle has no runs
    assert last["backup"].key == ("r1", 2) and last["backup"].reason == "exit_code"
    assert last["mail"].key == ("m1", 1) and last["mail"].finished_at == T0 + 6


def test_last_runs_of_a_thousand_actors_is_one_fast_query(store: Store) -> None:
    records: list[object] = []
    for i in range(1000):
        name = f"actor-{i:04d}"
        records.append(actor(name))
        records += [run(f"{name}-{n}", 1, actor=name, queued_at=T0 + n) for n in range(5)]
    store.write_batch(records)  # type: ignore[arg-type]
    started = time.perf_counter()
    last = store.last_runs()
    elapsed = time.perf_counter() - started
    assert len(last) == 1000
    assert all(r.run_id == f"{a}-4" for a, r in last.items())
    assert elapsed < 2.0, f"last_runs took {elapsed:.2f}s for 1,000 actors"
