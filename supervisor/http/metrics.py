"""``GET /metrics``: the supervisor's counters in the Prometheus text format.

A custom collector turns one ``metrics`` control reply (see :mod:`supervisor.metrics`) into
metric families at scrape time: the numbers are the supervisor's own, exact since it started,
never sampled or re-counted here. The supervisor's process metrics (CPU, memory, open files)
come from ``/proc`` under ``actor_supervisor_process_*``; the HTTP process's own under
``process_*``.
"""

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from supervisor.http.context import Backend
from supervisor.http.problems import Problem

P = "actor_supervisor_"


def _buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Per-bucket counts to Prometheus's cumulative ``le`` buckets, ending with ``+Inf``."""
    out: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip([*map(str, bounds), "+Inf"], counts, strict=True):
        total += count
        out.append((bound, total))
    return out


class SupervisorCollector(Collector):
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(P + "up", "1 when the supervisor answered this scrape")
        try:
            m = self._backend.call(lambda c: c.metrics())
        except Problem:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _families(m)


def _families(m: dict[str, Any]) -> Iterator[Metric]:
    runs = CounterMetricFamily(
        P + "runs", "finished attempts by outcome", labels=["actor", "status", "reason"]
    )
    for actor, status, reason, count in m["runs"]:
        runs.add_metric([actor, status, reason], count)
    yield runs
    durations = HistogramMetricFamily(
        P + "run_duration_seconds", "attempt wall-clock duration", labels=["actor"]
    )
    for actor, h in m["durations"].items():
        durations.add_metric([actor], _buckets(m["duration_bounds"], h["buckets"]), h["sum"])
    yield durations
    retries = CounterMetricFamily(P + "retries", "retries scheduled", labels=["actor"])
    for actor, count in m["retries"].items():
        retries.add_metric([actor], count)
    yield retries
    yield GaugeMetricFamily(P + "queue_depth", "accepted runs waiting for a worker",
                            value=m["queue_depth"])  # fmt: skip
    yield GaugeMetricFamily(P + "runs_in_flight", "runs on a worker now",
                            value=m["runs_in_flight"])  # fmt: skip
    workers = GaugeMetricFamily(P + "workers", "worker processes by state", labels=["state"])
    for state in ("idle", "busy", "starting", "stopping", "restarting"):
        workers.add_metric([state], m["workers"].get(state, 0))
    yield workers
    yield CounterMetricFamily(P + "worker_restarts", "worker processes that exited and were "
                              "replaced", value=m["worker_restarts"])  # fmt: skip
    paused = GaugeMetricFamily(P + "actor_paused", "1 while the actor is paused", labels=["actor"])
    failures = GaugeMetricFamily(P + "actor_consecutive_failures",
                                 "failed runs in a row", labels=["actor"])  # fmt: skip
    next_fire = GaugeMetricFamily(
        P + "next_fire_timestamp_seconds", "when the schedule fires next", labels=["actor"]
    )
    last_ok = GaugeMetricFamily(P + "last_success_timestamp_seconds",
                                "when the actor's last successful attempt finished",
                                labels=["actor"])  # fmt: skip
    last_success = m["last_success"]
    for name, is_paused, consecutive, next_at in m["actors"]:
        paused.add_metric([name], 1 if is_paused else 0)
        failures.add_metric([name], consecutive)
        if next_at is not None:
            next_fire.add_metric([name], next_at)
        if name in last_success:
            last_ok.add_metric([name], last_success[name])
    yield from (paused, failures, next_fire, last_ok)
    lateness = HistogramMetricFamily(P + "fire_lateness_seconds",
                                     "how late schedule fires were handled")  # fmt: skip
    lateness.add_metric([], _buckets(m["lateness_bounds"], m["lateness"]["buckets"]),
                        m["lateness"]["sum"])  # fmt: skip
    yield lateness
    yield GaugeMetricFamily(P + "store_degraded", "1 while store writes go to the spool",
                            value=1 if m["store_degraded"] else 0)  # fmt: skip
    yield GaugeMetricFamily(P + "store_spool_depth", "records waiting in the spool",
                            value=m["store_spool_depth"])  # fmt: skip
    batch = HistogramMetricFamily(P + "store_batch_seconds", "seconds per committed batch")
    batch.add_metric([], _buckets(m["store_batch_bounds"], m["store_batch"]["buckets"]),
                     m["store_batch"]["sum"])  # fmt: skip
    yield batch
    yield CounterMetricFamily(P + "busy_rejections", "submissions refused: ready queue full",
                              value=m["busy_rejections"])  # fmt: skip
    yield GaugeMetricFamily(P + "uptime_seconds", "seconds since the supervisor started",
                            value=m["uptime_s"])  # fmt: skip
    if m.get("alerts") is not None:  # only with [[alerts]]
        alerts = GaugeMetricFamily(P + "alerts", "alerts pending now, and delivered or failed "
                                   "since the supervisor started", labels=["status"])  # fmt: skip
        for status, value in sorted(m["alerts"].items()):
            alerts.add_metric([status], value)
        yield alerts


def build_registry(backend: Backend) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SupervisorCollector(backend))
    pid = backend.settings.supervisor_pid
    ProcessCollector(namespace="actor_supervisor", pid=lambda: pid, registry=registry)
    ProcessCollector(registry=registry)  # this HTTP process
    return registry


def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
