"""The ``retention_days`` setting, applied by the batch writer's thread between batches.

A year-long install must not grow without bound (the bundled example writes about 55 MB a
day), yet pruning must never stall the loop or the writes it waits for. So the writer thread,
the one that writes anyway, deletes one small batch (:data:`BATCH_RUNS` runs, one transaction)
when it has nothing else to do and a pass is due, and goes back to its records at once. While
a backlog remains, the next batch follows after :data:`BACKLOG_PAUSE_S`; once nothing is due,
the next pass is :data:`EVERY_S` later. What goes and what stays: :mod:`supervisor.store.prune`.
"""

import logging
import time
from collections.abc import Callable

from supervisor.settings import SupervisorSettings
from supervisor.store.base import Pruned, Store, StoreError

log = logging.getLogger(__name__)

DAY_S = 86400.0
BATCH_RUNS = 100  # runs per transaction: with their attempts and events, some 500 rows
EVERY_S = 300.0  # between passes once nothing is due
BACKLOG_PAUSE_S = 0.25  # between batches of a backlog: the writes come first
FIRST_PASS_S = 2.0  # after start: let the start-up writes go first


class Retention:
    """When the next batch is due, and doing it. Used by the writer thread only."""

    def __init__(
        self,
        store: Store,
        *,
        days: int,
        keep_failed_days: int,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.days = days
        self.keep_failed_days = max(keep_failed_days, days)
        self._clock = clock
        self._monotonic = monotonic
        self.next_at = monotonic() + FIRST_PASS_S
        self.total = Pruned()  # since start
        self._pass = Pruned()  # this pass: batches until nothing is due

    def wait_s(self) -> float:
        """Seconds until the next batch is due (0: now)."""
        return max(0.0, self.next_at - self._monotonic())

    def postpone(self) -> None:
        """Not now (the store is degraded): the next pass in :data:`EVERY_S`."""
        self.next_at = self._monotonic() + EVERY_S

    def step(self) -> Pruned:
        """Prune one batch if one is due; what it deleted."""
        if self._monotonic() < self.next_at:
            return Pruned()
        now = self._clock()
        try:
            pruned = self._store.prune(
                cutoff=now - self.days * DAY_S,
                failed_cutoff=now - self.keep_failed_days * DAY_S,
                limit=BATCH_RUNS,
            )
        except StoreError as exc:  # the store is down: the writer has its own way with that
            log.warning("retention: pruning failed, next try in %.0fs: %s", EVERY_S, exc,
                        extra={"event": "retention_failed"})  # fmt: skip
            self.next_at = self._monotonic() + EVERY_S
            return Pruned()
        self.total += pruned
        self._pass += pruned
        if pruned:
            self.next_at = self._monotonic() + BACKLOG_PAUSE_S
            return pruned
        if done := self._pass:
            log.info(
                "retention: pruned %d run(s), %d attempt(s), %d event(s), %d alert(s) "
                "older than %d day(s) (failed runs: %d)",
                done.runs, done.attempts, done.events, done.alerts, self.days,
                self.keep_failed_days,
                extra={"event": "retention_pruned", "runs": done.runs, "events": done.events},
            )  # fmt: skip
        self._pass = Pruned()
        self.next_at = self._monotonic() + EVERY_S
        return pruned


def retention_for(settings: SupervisorSettings, store: Store) -> Retention | None:
    """The writer's retention as configured; None when ``retention_days`` is 0 (keep all)."""
    if settings.retention_days <= 0:
        return None
    return Retention(
        store, days=settings.retention_days, keep_failed_days=settings.retention_keep_failed_days
    )
