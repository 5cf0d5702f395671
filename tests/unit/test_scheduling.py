"""Schedules, overlap, the breaker and retry timing through the run book, on a fake clock.

A downtime is one line here (the stored next fire moved into the past), where the end-to-end
tests have to stop a supervisor, edit its store and start another one.
"""

import random
from dataclasses import replace
from pathlib import Path

import pytest

from protocol.outcomes import Reason, RunStatus
from supervisor.actors import ActorRuntime
from supervisor.heap import EntryKind
from supervisor.records import RunRecord, Trigger
from supervisor.runbook import FIRE_BATCH
from supervisor.runs import retry_time
from supervisor.schedule import retry_delay
from tests.unit.fakes import Bench, bench, result

EVERY_S = 60.0


def scheduled(tmp_path: Path, **keys: object) -> Bench:
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in keys.items())
    return bench(
        tmp_path,
        f"""
[[actors]]
name = "job"
script = "job.py"
schedule = {{ type = "interval", seconds = {EVERY_S} }}
{extra}""",
    )


def down_since(b: Bench, seconds: float) -> float:
    """The actor's stored next fire is ``seconds`` old, as after a downtime; restore."""
    actor = b.book.actors["job"]
    assert actor.config.schedule is not None
    first_missed = b.clock() - seconds
    meta = {"schedule": actor.config.schedule.describe()}
    actor.state = replace(actor.state, next_run_at=first_missed, metadata=meta)
    b.book.restore([])
    return first_missed


def fires(b: Bench) -> list[tuple[str, float | None]]:
    return [(str(a.record.trigger), a.record.scheduled_for) for a in b.book.runs.values()]


@pytest.mark.parametrize(
    ("policy", "keys", "kept"),
    [
        ("none", {"catch_up": "none"}, 0),
        ("once", {"catch_up": "once"}, 1),
        ("all", {"catch_up": "all", "catch_up_max": 100}, 11),
        ("capped", {"catch_up": "all", "catch_up_max": 3}, 3),
    ],
)
def test_catch_up_policies_after_ten_and_a_half_minutes_down(
    tmp_path: Path, policy: str, keys: dict[str, object], kept: int
) -> None:
    b = scheduled(tmp_path, overlap="allow", **keys)
    first = down_since(b, 630.0)
    missed = [first + k * EVERY_S for k in range(11)]
    expected = missed[len(missed) - kept :] if kept else []
    assert sorted(due for _, due in fires(b)) == expected, policy
    assert all(trigger == Trigger.CATCH_UP for trigger, _ in fires(b))
    # Afterwards the schedule continues on its grid with the next future fire.
    assert b.book.actors["job"].state.next_run_at == pytest.approx(first + 11 * EVERY_S)
    if policy == "none":  # dropped, and said so
        (event,) = [r for r in b.sink.records if getattr(r, "event_type", "") == "fire_missed"]
        assert event.metadata["missed"] == 11
    # The schedule goes on from now, not from the missed fires: no burst.
    b.book.fire_due(b.clock())
    assert len(b.book.runs) <= kept + 1


def test_catch_up_runs_one_after_another_unless_overlap_is_allowed(tmp_path: Path) -> None:
    b = scheduled(tmp_path, catch_up="all")
    first = down_since(b, 150.0)  # three fires missed
    assert fires(b) == [("catch_up", first)]
    b.commit()
    for k in (1, 2):
        ((worker, run),) = b.dispatch("w1")
        b.book.on_result(worker, result(run, worker, RunStatus.SUCCEEDED))
        assert [due for _, due in fires(b)] == [first + k * EVERY_S]
        b.commit()


@pytest.mark.parametrize("overlap", ["skip", "queue", "allow"])
def test_overlap_policies_when_a_fire_finds_the_previous_run_going(
    tmp_path: Path, overlap: str
) -> None:
    b = scheduled(tmp_path, overlap=overlap)
    b.book.restore([])  # a fresh schedule: its first fire is due now
    b.book.fire_due(b.clock())
    b.commit()
    b.dispatch("w1")
    b.clock.advance(EVERY_S)
    b.book.fire_due(b.clock())  # the first run is still going
    actor: ActorRuntime = b.book.actors["job"]
    if overlap == "skip":
        assert len(b.book.runs) == 1 and b.book.scheduler.skipped == 1
        (skipped,) = [r for r in b.sink.records if getattr(r, "event_type", "") == "run_skipped"]
        assert skipped.metadata["reason"] == "overlap"
    elif overlap == "queue":  # it starts as soon as the run before it has finished
        assert len(b.book.runs) == 1 and list(actor.pending) == [("schedule", b.clock())]
        assert b.book.scheduler.skipped == 0
        ((worker, run),) = b.workers.sent
        b.book.on_result(worker, result(run, worker, RunStatus.SUCCEEDED))
        assert fires(b) == [("schedule", b.clock())] and not actor.pending
    else:
        assert len(b.book.runs) == 2 and b.book.scheduler.skipped == 0
        b.commit()
        assert len(b.dispatch("w2")) == 1  # the two overlap


def test_a_full_ready_queue_drops_the_fire_and_says_so(tmp_path: Path) -> None:
    b = scheduled(tmp_path)
    b.book.settings = replace(b.book.settings, queue_size=0)
    b.book.restore([])
    b.book.fire_due(b.clock())
    assert b.book.runs == {} and b.book.scheduler.dropped == 1


BREAKER = {"max_consecutive_failures": 2, "breaker_cooldown_s": 30.0, "max_retries": 0}


def finish(b: Bench, run_id: str, status: RunStatus = RunStatus.FAILED_PERMANENT) -> None:
    b.commit()
    ((worker, run),) = b.dispatch("w1")
    assert run.run_id == run_id
    b.book.on_result(
        worker, result(run, worker, status, None if status == "succeeded" else Reason.EXIT_CODE)
    )
    b.commit()


def test_the_breaker_opens_then_probes_after_each_cooldown_and_closes_on_success(
    tmp_path: Path,
) -> None:
    keys = "".join(f"{k} = {v}\n" for k, v in BREAKER.items() if k != "max_retries")
    b = bench(tmp_path, f'[[actors]]\nname = "job"\nscript = "job.py"\n{keys}')
    actor = b.book.actors["job"]
    for _ in range(2):
        finish(b, b.book.accept(actor, input_value={}, trigger="submit").run_id)
    assert actor.state.is_paused and actor.state.metadata["paused_by"] == "breaker"
    assert actor.state.paused_reason == "circuit breaker: 2 consecutive failures"
    assert (EntryKind.PROBE, "job") in b.book.heap
    b.clock.advance(29.9)
    b.book.fire_due(b.clock())
    assert b.book.runs == {}  # still cooling down
    for _ in range(2):  # each failed probe re-opens the breaker for another cooldown
        b.clock.advance(30.0)
        b.book.fire_due(b.clock())
        (probe,) = b.book.runs.values()
        assert probe.record.trigger == Trigger.PROBE
        finish(b, probe.run_id)
        assert actor.state.is_paused and (EntryKind.PROBE, "job") in b.book.heap
    b.clock.advance(30.0)
    b.book.fire_due(b.clock())
    (probe,) = b.book.runs.values()  # this probe fails once; its retry (trigger retry) succeeds
    finish(b, probe.run_id, RunStatus.FAILED_RETRYABLE)
    assert probe.record.attempt == 2 and actor.state.is_paused
    b.clock.advance(probe.record.scheduled_for - b.clock())  # type: ignore[operator]
    b.book.fire_due(b.clock())
    finish(b, probe.run_id, RunStatus.SUCCEEDED)
    assert not actor.state.is_paused and actor.state.consecutive_failures == 0
    assert (EntryKind.PROBE, "job") not in b.book.heap
    # Open again; an operator's pause then takes over: no probe may resume the actor.
    for _ in range(2):
        finish(b, b.book.accept(actor, input_value={}, trigger="submit").run_id)
    b.book.breaker.pause(actor, "investigating", by="operator")
    b.clock.advance(300.0)
    b.book.fire_due(b.clock())
    assert b.book.runs == {} and actor.state.paused_reason == "investigating"
    events = [
        (r.event_type, r.metadata.get("by"))
        for r in b.sink.records
        if getattr(r, "event_type", "") in ("actor_paused", "actor_resumed")
    ]
    assert events == [
        ("actor_paused", "breaker"), ("actor_resumed", "breaker"),
        ("actor_paused", "breaker"), ("actor_paused", "operator"),
    ]  # fmt: skip


def test_an_operators_pause_gets_no_probe(tmp_path: Path) -> None:
    b = bench(tmp_path, '[[actors]]\nname = "job"\nscript = "job.py"\nbreaker_cooldown_s = 5\n')
    actor = b.book.actors["job"]
    b.book.breaker.pause(actor, "maintenance", by="operator")
    assert actor.state.is_paused and (EntryKind.PROBE, "job") not in b.book.heap
    b.book.breaker.pause(actor, "breaker", by="breaker")  # the operator's pause stays
    assert actor.state.metadata["paused_by"] == "operator"


def test_lost_workers_do_not_count_against_the_breaker(tmp_path: Path) -> None:
    b = bench(tmp_path, '[[actors]]\nname = "job"\nscript = "job.py"\n'
              + "".join(f"{k} = {v}\n" for k, v in BREAKER.items()))  # fmt: skip
    actor = b.book.actors["job"]
    active = b.book.accept(actor, input_value={}, trigger="submit")
    b.commit()
    b.dispatch("w1")
    b.book.worker_gone("w1", "was killed", [active.run_id])
    assert actor.state.consecutive_failures == 0


def test_retry_delays_double_up_to_the_cap_and_jitter_stays_below() -> None:
    rng = random.Random(7)
    assert [retry_delay(n, 2.0, 30.0, False, rng) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]
    jittered = [retry_delay(5, 2.0, 30.0, True, rng) for _ in range(200)]
    assert all(0 <= d <= 30.0 for d in jittered) and len(set(jittered)) > 100


def test_attempts_lost_with_their_worker_are_free_retries(tmp_path: Path) -> None:
    b = bench(tmp_path, '[[actors]]\nname = "job"\nscript = "job.py"\nmax_retries = 1\n'
              "retry_jitter = false\nretry_backoff_s = 3\n")  # fmt: skip
    cfg, rng = b.book.actors["job"].config, random.Random(1)

    def attempt(n: int, status: RunStatus = RunStatus.FAILED_RETRYABLE) -> RunRecord:
        return RunRecord(run_id="r", attempt=n, actor="job", correlation_id="r",
                         trigger="retry", queued_at=0.0, status=status)  # fmt: skip

    assert retry_time(cfg, attempt(1), 0, 100.0, rng) == 103.0
    assert retry_time(cfg, attempt(2), 0, 100.0, rng) is None  # max_retries = 1
    assert retry_time(cfg, attempt(2), 1, 100.0, rng) == 106.0  # one attempt died with a worker
    assert retry_time(cfg, attempt(1, RunStatus.FAILED_PERMANENT), 0, 100.0, rng) is None


def test_a_burst_of_due_fires_is_taken_in_chunks_so_the_first_runs_go_out_at_once(
    tmp_path: Path,
) -> None:
    """1,000 actors due in the same second: one turn of the loop must not make (and wait for
    the commit of) every queued run before the first goes to a free worker."""
    count = 3 * FIRE_BATCH + 5
    tables = "".join(
        f'[[actors]]\nname = "a{i:03}"\nscript = "job.py"\n'
        f'schedule = {{ type = "interval", seconds = {EVERY_S} }}\n'
        for i in range(count)
    )
    b = bench(tmp_path, tables)
    b.book.restore([])  # fresh schedules: every first fire is due now
    now = b.clock()
    b.book.fire_due(now)
    assert len(b.book.runs) == FIRE_BATCH
    assert b.book.heap.timeout_ms(now, 1000) == 0  # the rest is still due: no wait in the poll
    b.commit()
    assert len(b.dispatch("w1", "w2")) == 2  # the first chunk's runs go out before the rest fire
    turns = 1
    while b.book.heap.timeout_ms(now, 1000) == 0:
        b.book.fire_due(now)
        turns += 1
    assert len(b.book.runs) == count and turns == 4
    assert all(a.record.scheduled_for == now for a in b.book.runs.values())
