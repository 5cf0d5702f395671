"""The loop's side of alerts: which events become alerts, with what payload, folded how.

:meth:`AlertBook.observe` is the batch writer's ``observe`` hook: it sees every record the
supervisor writes, on the thread that writes it, and returns the outbox rows an event causes,
which the writer commits in the same transaction as the event. It never blocks and never
touches the network; delivery is the sender's business.

Folding: the first (event, actor) alert of a destination goes out at once; repeats within
``alert_repeat_s`` of it fold into one more alert, due when that window closes, whose ``count``
says how many occurrences it stands for. The next occurrence after the window opens a new one.
"""

import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from protocol.outcomes import Reason, RunStatus
from supervisor.actors import ActorRuntime
from supervisor.alerts import records as names
from supervisor.alerts.config import AlertConfig
from supervisor.alerts.records import AlertRecord
from supervisor.events import new_id
from supervisor.records import Event, Record, RunRecord

# failures the breaker does not count against an actor (see supervisor.breaker)
_NOT_THE_ACTORS_FAULT = frozenset({Reason.SHUTDOWN, Reason.SUPERVISOR_LOST, Reason.WORKER_LOST})
_MAX_FOLDS = 10_000  # open windows kept; beyond, closed ones are forgotten
_STDERR_CHARS = 4000


@dataclass(slots=True)
class _Fold:
    window_end: float
    repeat_id: str | None = None
    repeats: int = 0
    first_repeat_at: float = 0.0


class AlertBook:
    """Matches events against ``alerts``; ``actors`` looks an actor up (None: gone)."""

    def __init__(
        self,
        alerts: Sequence[AlertConfig],
        *,
        repeat_s: float,
        public_url: str | None,
        instance_id: str,
        actors: Callable[[str], ActorRuntime | None],
        clock: Callable[[], float],
    ) -> None:
        self._alerts = tuple(alerts)
        self._repeat_s = repeat_s
        self._public_url = public_url
        self._instance_id = instance_id
        self._actors = actors
        self._clock = clock
        self._host = socket.gethostname()
        self._lock = threading.Lock()
        self._run: RunRecord | None = None  # the final attempt whose event comes next
        self._last_error: dict[str, str | None] = {}  # by actor: for actor_paused
        self._streaks: dict[str, int] = {}  # by actor: failures in a row, for actor_recovered
        self._folds: dict[tuple[str, str, str], _Fold] = {}
        self.wanted = frozenset(e for alert in self._alerts for e in alert.events)

    def observe(self, record: Record) -> list[Record]:
        """The outbox rows ``record`` causes (the batch writer's ``observe`` hook)."""
        if isinstance(record, RunRecord):
            if record.is_final:
                self._run = record
            return []
        if not isinstance(record, Event):
            return []
        with self._lock:
            return self._alerts_for(record)

    # --- which alerts -------------------------------------------------------------------------

    def _alerts_for(self, event: Event) -> list[Record]:
        meta = event.metadata
        kind = event.event_type
        found: list[tuple[str, dict[str, Any]]] = []
        if kind in ("run_failed", "run_succeeded"):
            run = self._run if self._run and self._run.run_id == event.aggregate_id else None
            self._run = None
            found = self._run_alerts(event, run)
        elif kind == "actor_paused":
            actor = self._actors(event.aggregate_id)
            failures = actor.state.consecutive_failures if actor else None
            found = [(names.ACTOR_PAUSED, {
                "actor": event.aggregate_id, "reason": meta.get("reason"),
                "paused_by": meta.get("by"), "failures": failures,
                "error": self._last_error.get(event.aggregate_id),
            })]  # fmt: skip
        elif kind in ("run_skipped", "fire_missed"):
            found = [(names.FIRE_MISSED, {
                "actor": event.aggregate_id, "reason": meta.get("reason"),
                "scheduled_for": _iso(meta.get("scheduled_for")), "missed": meta.get("missed", 1),
            })]  # fmt: skip
        elif kind in (
            names.SUPERVISOR_STARTED, names.SUPERVISOR_STOPPED,
            names.STORE_DEGRADED, names.STORE_RECOVERED,
        ):  # fmt: skip
            found = [(kind, {"details": dict(meta)})]
        return [row for name, fields in found for row in self._rows(name, fields, event)]

    def _run_alerts(self, event: Event, run: RunRecord | None) -> list[tuple[str, dict[str, Any]]]:
        meta = event.metadata
        actor_name = str(meta.get("actor", ""))
        actor = self._actors(actor_name)
        fields = _run_fields(event, run)
        if event.event_type == "run_succeeded":
            # The streak is remembered here too: a resume by hand resets the actor's count
            # before the success that ends the trouble comes in.
            state = actor.state if actor else None
            paused_by = state.metadata.get("paused_by") if state and state.is_paused else None
            streak = max(
                self._streaks.pop(actor_name, 0), state.consecutive_failures if state else 0
            )
            if streak > 0 or paused_by == "breaker":
                return [(names.ACTOR_RECOVERED, {
                    **fields, "failures": streak, "was_paused": paused_by == "breaker",
                })]  # fmt: skip
            return []
        found: list[tuple[str, dict[str, Any]]] = []
        reason = meta.get("reason")
        if reason == Reason.TIMEOUT:
            found.append((names.RUN_TIMEOUT, fields))
        if reason in (Reason.WORKER_LOST, Reason.POISON):
            found.append((names.WORKER_LOST, fields))
        if meta.get("will_retry"):
            return found
        self._last_error[actor_name] = fields.get("error")
        failures = actor.state.consecutive_failures if actor else 0
        if reason not in _NOT_THE_ACTORS_FAULT:
            failures += 1  # the breaker counts this one right after the event
            self._streaks[actor_name] = failures
        threshold = actor.config.alert_after_failures if actor else 1
        if failures >= threshold:
            found.append((names.RUN_FAILED, {**fields, "failures": failures}))
        return found

    # --- rows ---------------------------------------------------------------------------------

    def _rows(self, event: str, fields: dict[str, Any], cause: Event) -> list[AlertRecord]:
        if event not in self.wanted:
            return []
        now = self._clock()
        actor = fields.get("actor")
        rows: list[AlertRecord] = []
        for alert in self._alerts:
            if alert.wants(event, actor):
                rows.append(self._row(alert, event, fields, cause, now))
        return rows

    def _row(
        self, alert: AlertConfig, event: str, fields: dict[str, Any], cause: Event, now: float
    ) -> AlertRecord:
        actor = fields.get("actor")
        key = (alert.name, event, actor or "")
        fold = self._folds.get(key)
        if fold is None or now >= fold.window_end or self._repeat_s <= 0:
            if len(self._folds) >= _MAX_FOLDS:
                self._folds = {k: f for k, f in self._folds.items() if f.window_end > now}
            self._folds[key] = _Fold(window_end=now + self._repeat_s)
            alert_id, count, due, first, folded = new_id(), 1, now, now, False
        else:
            if fold.repeat_id is None:
                fold.repeat_id, fold.first_repeat_at = new_id(), now
            fold.repeats += 1
            alert_id, count, due = fold.repeat_id, fold.repeats, fold.window_end
            first, folded = fold.first_repeat_at, True
        payload = self._payload(alert_id, event, fields, cause, count, first, now, folded)
        return AlertRecord(
            alert_id=alert_id,
            destination=alert.name,
            event=event,
            actor=actor,
            run_id=fields.get("run_id"),
            payload=payload,
            count=count,
            due_at=due,
            created_at=now,
            updated_at=now,
        )

    def _payload(
        self,
        alert_id: str,
        event: str,
        fields: dict[str, Any],
        cause: Event,
        count: int,
        first: float,
        now: float,
        folded: bool,
    ) -> dict[str, Any]:
        run_id = fields.get("run_id")
        link = f"{self._public_url}/runs/{run_id}" if self._public_url and run_id else None
        payload: dict[str, Any] = {
            "alert_id": alert_id,
            "event": event,
            "actor": None,
            "run_id": None,
            "attempt": None,
            "status": None,
            "reason": None,
            "error": None,
            "stderr_tail": None,
            "code_version": None,
            **fields,
            "count": count,
            "folded": folded,
            "first_at": _iso(first),
            "last_at": _iso(now),
            "link": link,
            "supervisor": {"instance_id": self._instance_id, "host": self._host,
                           "pid": os.getpid()},
            "event_id": cause.event_id,
        }  # fmt: skip
        payload["summary"] = summary(payload)
        return payload


def _run_fields(event: Event, run: RunRecord | None) -> dict[str, Any]:
    meta = event.metadata
    fields: dict[str, Any] = {
        "actor": meta.get("actor"),
        "run_id": event.aggregate_id,
        "attempt": meta.get("attempt"),
        "status": meta.get("status"),
        "reason": meta.get("reason"),
        "error": meta.get("error"),
        "exit_code": meta.get("exit_code"),
        "will_retry": bool(meta.get("will_retry")),
        "code_version": {
            "sha256": meta.get("code_sha256") or None,
            "history_id": meta.get("code_history_id"),
            "source": meta.get("code_source"),
        },
        "stderr_tail": None,
    }
    if run is not None:
        fields["stderr_tail"] = run.stderr_tail[-_STDERR_CHARS:] or None
        fields["duration_ms"] = run.duration_ms
        fields["trigger"] = run.trigger
    return fields


def summary(payload: dict[str, Any]) -> str:
    """One line for chat formats and logs."""
    event = payload["event"]
    parts = [f"[actor-supervisor] {event}"]
    if payload.get("actor"):
        parts.append(f"actor {payload['actor']}")
    if payload.get("run_id"):
        parts.append(f"run {payload['run_id']} attempt {payload.get('attempt')}")
    text = ": ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]
    if payload.get("status") and payload["status"] != RunStatus.SUCCEEDED:
        text += f" {payload['status']}"
    if payload.get("reason"):
        text += f" ({payload['reason']})"
    if payload.get("error"):
        text += f": {str(payload['error'])[:300]}"
    if payload.get("paused_by"):
        text += f" by {payload['paused_by']} after {payload.get('failures')} failure(s)"
    if payload.get("folded"):
        text += f" [{payload['count']} more within the repeat window]"
    return text


def _iso(ts: Any) -> str | None:
    if not isinstance(ts, int | float):
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
