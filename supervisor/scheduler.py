"""Turning schedules into runs: seeding the heap, firing, catching up, overlap policies.

The heap holds one ``("fire", actor)`` entry per scheduled actor (retries and breaker probes
share the heap under other kinds; the supervisor dispatches on the kind). Firing pops the entry,
pushes the next due time and starts a run: O(log n) whatever the number of actors.
"""

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from supervisor import events
from supervisor.actors import ActorRuntime
from supervisor.heap import EntryKind, Key, ScheduleHeap
from supervisor.records import RecordSink, Trigger
from supervisor.schedule import missed_fires

log = logging.getLogger(__name__)

MAX_PENDING = 100  # fires an actor may have waiting for its running one; beyond, they are skipped
SKIP_SUMMARY_S = 60.0  # skipped fires are logged as one summary line per this many seconds


class Accept(Protocol):
    def __call__(
        self, actor: ActorRuntime, *, input_value: Any, trigger: str, scheduled_for: float | None
    ) -> object: ...


class Scheduler:
    """Fires actors' schedules into ``accept``, honouring pause, overlap and catch-up."""

    def __init__(
        self,
        heap: ScheduleHeap[Key],
        writer: RecordSink,
        accept: Accept,
        has_room: Callable[[], bool],
    ) -> None:
        self._heap = heap
        self._writer = writer
        self._accept = accept
        self._has_room = has_room
        self.dropped = 0  # fires lost to a full ready queue
        self.skipped = 0  # fires skipped because the previous run was still going
        self._skips: Counter[str] = Counter()  # per actor, since the last summary
        self._summary_due = 0.0  # monotonic

    def seed(self, actor: ActorRuntime, now: float) -> None:
        """Where a schedule resumes at start-up: fresh, caught up after downtime, or as stored.

        The stored ``next_run_at`` is the first fire that never happened; ``metadata.schedule``
        says which schedule it belongs to, so a changed schedule starts afresh.
        """
        schedule = actor.config.schedule
        if schedule is None:
            return
        described = schedule.describe()
        state = actor.state
        due: float | None
        if state.metadata.get("schedule") != described or described["type"] == "immediate":
            due = schedule.first_due(now)
        elif state.next_run_at is None:
            due = None  # no fires left: a `once` that already ran
        elif state.next_run_at < now:
            due = schedule.resume_due(state.next_run_at, now)
            self._catch_up(actor, state.next_run_at, now)
        else:
            due = state.next_run_at
        self._set_next(actor, due, described)

    def reseed(self, actor: ActorRuntime, now: float) -> None:
        """A schedule changed while running (configuration reload): it takes effect from now."""
        self.forget(actor.name)
        schedule = actor.config.schedule
        if schedule is None:
            self._writer.put(actor.update_state(next_run_at=None))
            return
        self._set_next(actor, schedule.first_due(now), schedule.describe())

    def forget(self, name: str) -> None:
        self._heap.remove((EntryKind.FIRE, name))

    def _set_next(self, actor: ActorRuntime, due: float | None, described: dict[str, Any]) -> None:
        metadata = _with_schedule(actor.state.metadata, described)
        self._writer.put(actor.update_state(next_run_at=due, metadata=metadata))
        if due is not None:
            self._heap.push((EntryKind.FIRE, actor.name), due)

    def _catch_up(self, actor: ActorRuntime, first_missed: float, now: float) -> None:
        """Fires missed while no supervisor ran, per the actor's ``catch_up`` policy:
        ``none`` skips them, ``once`` runs one for all, ``all`` one each (up to ``catch_up_max``).
        """
        cfg = actor.config
        assert cfg.schedule is not None
        keep = {"none": 0, "once": 1}.get(cfg.catch_up, cfg.catch_up_max)
        later = missed_fires(cfg.schedule, first_missed, now, cfg.catch_up, cfg.catch_up_max)
        missed = [first_missed, *later][-keep:] if keep else []
        log.info(
            "actor %s missed fires while stopped; catch_up=%s runs %d",
            actor.name, cfg.catch_up, len(missed), extra={"actor": actor.name},
        )  # fmt: skip
        if cfg.catch_up == "none":  # the missed fires are dropped: say so (and alert)
            later_ones = missed_fires(cfg.schedule, first_missed, now, "all", cfg.catch_up_max)
            dropped = 1 + len(later_ones)
            self._writer.put(events.actor_event(
                "fire_missed", actor.name, reason="catch_up_none", missed=dropped,
                scheduled_for=first_missed,
            ))  # fmt: skip
        if actor.state.is_paused or not missed:
            return
        if cfg.overlap == "allow":
            for fire in missed:
                self._accept(
                    actor, input_value=cfg.input, trigger=Trigger.CATCH_UP, scheduled_for=fire
                )
            return
        # One after another, like the fires they stand for: never two runs of it at once.
        actor.pending.extend(("catch_up", fire) for fire in missed)
        self.after_final(actor)

    def fire(self, actor: ActorRuntime, due: float, now: float) -> None:
        """The actor's fire at ``due`` is here: push the next one, then run unless told not to."""
        schedule = actor.config.schedule
        if schedule is None:
            return
        following = schedule.next_due(due)
        if following is not None and following <= now:  # the loop fell behind: no burst
            following = schedule.next_due(now)
        if following is not None:
            self._heap.push((EntryKind.FIRE, actor.name), following)
        self._writer.put(actor.update_state(next_run_at=following))
        if actor.state.is_paused:
            return
        if actor.running and actor.config.overlap != "allow":
            self._overlap(actor, due)
            return
        if not self._has_room():
            self.dropped += 1
            log.warning("actor %s: fire dropped, the ready queue is full", actor.name)
            self._writer.put(events.actor_event(
                "fire_missed", actor.name, reason="queue_full", scheduled_for=due, missed=1
            ))  # fmt: skip
            return
        self._accept(
            actor, input_value=actor.config.input, trigger=Trigger.SCHEDULE, scheduled_for=due
        )

    def _overlap(self, actor: ActorRuntime, due: float) -> None:
        """A fire while the previous run is still going: ``queue`` it or ``skip`` it."""
        queue = actor.config.overlap == "queue"
        if queue and len(actor.pending) < MAX_PENDING:
            actor.pending.append(("schedule", due))
            return
        self._writer.put(
            events.actor_event(
                "run_skipped",
                actor.name,
                scheduled_for=due,
                reason="queue_full" if queue else "overlap",
                active_runs=sorted(actor.active),
            )
        )
        self.skipped += 1
        self._skips[actor.name] += 1
        self.summarize_skips()

    def summarize_skips(self, force: bool = False) -> None:
        """One log line for the fires skipped since the last one, at most every
        ``SKIP_SUMMARY_S``: a fast schedule on a slow script must not flood the log."""
        now = time.monotonic()
        if not self._skips or (now < self._summary_due and not force):
            return
        self._summary_due = now + SKIP_SUMMARY_S
        skips, self._skips = self._skips, Counter()
        log.info(
            "fires skipped while the previous run was still going: %s",
            ", ".join(f"{name} {count}" for name, count in skips.most_common()),
            extra={"event": "fires_skipped", "skipped": dict(skips), "total": self.skipped},
        )

    def after_final(self, actor: ActorRuntime) -> None:
        """The actor has no run going: start the next fire waiting for that, if any."""
        if actor.pending and not actor.running and not actor.state.is_paused:
            trigger, due = actor.pending.pop(0)
            self._accept(actor, input_value=actor.config.input, trigger=trigger, scheduled_for=due)


_SHARED_METADATA: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}
_SHARED_MAX = 100_000  # distinct schedules; beyond, the table starts again


def _with_schedule(metadata: dict[str, Any], described: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` with its ``schedule``. States never change a metadata dict in place (they
    are replaced), so actors whose metadata is only their schedule share one dict per distinct
    schedule: 100,000 actors on a few schedules hold a few dicts, not 200,000."""
    if metadata.keys() - {"schedule"}:
        return {**metadata, "schedule": described}
    key = tuple(described.items())
    shared = _SHARED_METADATA.get(key)
    if shared is None:
        if len(_SHARED_METADATA) >= _SHARED_MAX:
            _SHARED_METADATA.clear()
        shared = _SHARED_METADATA[key] = {"schedule": described}
    return shared
