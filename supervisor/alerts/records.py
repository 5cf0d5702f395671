"""The outbox row: one alert for one destination, and the names alerts may ask for.

Plain values only, so a row can wait in the spool like any other record. The loop writes a row
(``pending``) through the batch writer; the sender then owns its delivery columns
(``status``, ``attempts``, ``due_at``, ``delivered_at``, ``last_error``) and writes them
straight to the store. The loop's later version of a row (a folded repeat with a higher count)
only ever changes ``payload``, ``count`` and ``updated_at`` of a row still ``pending``.
"""

from dataclasses import dataclass, field
from typing import Any

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"  # every attempt failed; kept for `actor-supervisor alerts`

RUN_FAILED = "run_failed"
ACTOR_PAUSED = "actor_paused"
ACTOR_RECOVERED = "actor_recovered"
RUN_TIMEOUT = "run_timeout"
WORKER_LOST = "worker_lost"
STORE_DEGRADED = "store_degraded"
STORE_RECOVERED = "store_recovered"
FIRE_MISSED = "fire_missed"
SUPERVISOR_STARTED = "supervisor_started"
SUPERVISOR_STOPPED = "supervisor_stopped"

ALERT_EVENTS = (
    RUN_FAILED, ACTOR_PAUSED, ACTOR_RECOVERED, RUN_TIMEOUT, WORKER_LOST, STORE_DEGRADED,
    STORE_RECOVERED, FIRE_MISSED, SUPERVISOR_STARTED, SUPERVISOR_STOPPED,
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertRecord:
    """One row of ``alert_outbox``, keyed by ``alert_id``.

    ``count`` is how many occurrences the alert stands for: 1, or more for the alert that folds
    the repeats of one (event, actor) seen within ``alert_repeat_s``; such an alert is due
    (``due_at``) when its window closes. ``payload`` is the JSON document a receiver gets.
    """

    alert_id: str
    destination: str
    event: str
    actor: str | None = None
    run_id: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    count: int = 1
    status: str = PENDING
    attempts: int = 0
    due_at: float
    created_at: float
    updated_at: float
    delivered_at: float | None = None
    last_error: str | None = None
