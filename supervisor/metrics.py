"""Counters and histograms the supervisor keeps in memory for ``/metrics``.

The loop pays a dict increment and a bisect per finished attempt or schedule fire, nothing
more: no labels objects, no locks, no strings built. The ``metrics`` control request
(:mod:`supervisor.requests`) copies them into a plain JSON document, and the HTTP process
(:mod:`supervisor.http.metrics`) renders that in the Prometheus text format. Counts are exact
since the supervisor started; Prometheus handles the reset when it restarts.
"""

import time
from bisect import bisect_left
from typing import Any

from protocol.outcomes import RunStatus

# Upper bounds in seconds (``le``); one more bucket counts everything above the last one.
DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
LATENESS_BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0)
BATCH_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class Histogram:
    """Bucket counts (not cumulative), a sum and a count; ``observe`` is one bisect."""

    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def snapshot(self) -> dict[str, Any]:
        """A copy that stays consistent if another thread observes meanwhile (the GIL makes
        the list copy atomic; sum and count may be one observation ahead, never behind)."""
        buckets = list(self.buckets)
        return {"buckets": buckets, "sum": self.sum, "count": sum(buckets)}


class RunMetrics:
    """What finished and how long it took, per actor; kept by the loop thread only."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str, str], int] = {}  # (actor, status, reason) -> attempts
        self.durations: dict[str, Histogram] = {}
        self.retries: dict[str, int] = {}
        self.last_success: dict[str, float] = {}
        self.lateness = Histogram(LATENESS_BOUNDS)

    def attempt_finished(
        self, actor: str, status: str, reason: str | None, duration_ms: float | None, at: float
    ) -> None:
        """One attempt ended (a retried attempt counts too, with its own status and reason)."""
        key = (actor, status, reason or "")
        self.runs[key] = self.runs.get(key, 0) + 1
        if duration_ms is not None:
            histogram = self.durations.get(actor)
            if histogram is None:
                histogram = self.durations[actor] = Histogram(DURATION_BOUNDS)
            histogram.observe(duration_ms / 1000.0)
        if status == RunStatus.SUCCEEDED:
            self.last_success[actor] = at

    def retry_scheduled(self, actor: str) -> None:
        self.retries[actor] = self.retries.get(actor, 0) + 1

    def fired(self, due: float, now: float) -> None:
        """A schedule fire handled ``now - due`` seconds after it was due."""
        self.lateness.observe(max(0.0, now - due))

    def snapshot(self) -> dict[str, Any]:
        return {
            "runs": [[a, s, r, n] for (a, s, r), n in self.runs.items()],
            "duration_bounds": list(DURATION_BOUNDS),
            "durations": {actor: h.snapshot() for actor, h in self.durations.items()},
            "retries": dict(self.retries),
            "last_success": dict(self.last_success),
            "lateness_bounds": list(LATENESS_BOUNDS),
            "lateness": self.lateness.snapshot(),
            "taken_at": time.time(),
        }
