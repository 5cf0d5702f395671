"""Pausing actors: by hand, or by the circuit breaker after consecutive failures.

An actor that keeps failing is paused so it cannot take the system down or spam its targets.
With ``breaker_cooldown_s`` set, one half-open *probe* run is let through after each cooldown:
success closes the breaker (the actor resumes), failure keeps it open until the next probe.
Every change is durable task state plus an event.
"""

import logging
from collections.abc import Callable

from protocol.outcomes import Reason, RunStatus
from supervisor import events
from supervisor.actors import ActorRuntime
from supervisor.heap import EntryKind, Key, ScheduleHeap
from supervisor.records import RecordSink, RunRecord, Trigger

log = logging.getLogger(__name__)

# A worker can die of another run's doing; a run that keeps killing workers ends as POISON.
# A cancelled run is an operator's decision, not a failure of the actor.
NOT_THE_ACTORS_FAULT = frozenset(
    {Reason.SHUTDOWN, Reason.SUPERVISOR_LOST, Reason.WORKER_LOST, Reason.CANCELLED}
)


class Breaker:
    """Counts final outcomes per actor and opens, probes and closes its breaker."""

    def __init__(
        self,
        writer: RecordSink,
        heap: ScheduleHeap[Key],
        clock: Callable[[], float],
    ) -> None:
        self._writer = writer
        self._heap = heap
        self._clock = clock
        # Probe runs not yet final. A probe's retries are triggered by "retry", so its final
        # attempt is known to be a probe by its run id, not by its trigger.
        self._probes: set[str] = set()

    def probe_accepted(self, run_id: str) -> None:
        self._probes.add(run_id)

    def account(self, actor: ActorRuntime, record: RunRecord) -> None:
        """Record a run's final outcome in the actor's state; open or close the breaker."""
        probe = record.trigger == Trigger.PROBE or record.run_id in self._probes
        self._probes.discard(record.run_id)
        if record.reason in NOT_THE_ACTORS_FAULT:
            return
        succeeded = record.status == RunStatus.SUCCEEDED
        failures = 0 if succeeded else actor.state.consecutive_failures + 1
        self._writer.put(
            actor.update_state(last_run_at=record.finished_at, consecutive_failures=failures)
        )
        opened_by_breaker = (
            actor.state.is_paused and actor.state.metadata.get("paused_by") == "breaker"
        )
        if probe and opened_by_breaker:
            if succeeded:
                self.resume(actor, by="breaker")
            else:
                self._schedule_probe(actor)
            return
        limit = actor.config.max_consecutive_failures
        if not succeeded and limit and failures >= limit and not actor.state.is_paused:
            self.pause(actor, f"circuit breaker: {failures} consecutive failures", by="breaker")

    def pause(self, actor: ActorRuntime, reason: str, *, by: str) -> None:
        """Pause the actor. An operator's pause takes over the breaker's: no probe resumes it."""
        paused_by = actor.state.metadata.get("paused_by")
        if actor.state.is_paused and (by == "breaker" or paused_by != "breaker"):
            return
        self._heap.remove((EntryKind.PROBE, actor.name))
        metadata = {**actor.state.metadata, "paused_by": by}
        self._writer.put(
            actor.update_state(is_paused=True, paused_reason=reason, metadata=metadata)
        )
        self._writer.put(events.actor_event("actor_paused", actor.name, reason=reason, by=by))
        log.warning("actor %s paused: %s", actor.name, reason, extra={"actor": actor.name})
        if by == "breaker":
            self._schedule_probe(actor)

    def resume(self, actor: ActorRuntime, *, by: str) -> None:
        """Unpause and forget the failures, so the breaker starts counting afresh."""
        metadata = {k: v for k, v in actor.state.metadata.items() if k != "paused_by"}
        was_paused = actor.state.is_paused
        self._writer.put(
            actor.update_state(
                is_paused=False, paused_reason=None, consecutive_failures=0, metadata=metadata
            )
        )
        self._heap.remove((EntryKind.PROBE, actor.name))
        if was_paused:
            self._writer.put(events.actor_event("actor_resumed", actor.name, by=by))
            log.info("actor %s resumed", actor.name, extra={"actor": actor.name, "by": by})

    def _schedule_probe(self, actor: ActorRuntime) -> None:
        cooldown = actor.config.breaker_cooldown_s
        if cooldown is not None:
            self._heap.push((EntryKind.PROBE, actor.name), self._clock() + cooldown)

    def restore(self, actor: ActorRuntime) -> None:
        """After a restart: an actor the breaker had paused gets its probe back."""
        if actor.state.is_paused and actor.state.metadata.get("paused_by") == "breaker":
            self._schedule_probe(actor)
