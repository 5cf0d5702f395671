"""/metrics counts exactly what the supervisor did, as the store recorded it."""

import re

import pytest

from tests.helpers import wait_for
from tests.http.conftest import HttpSupervisor


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None when it is absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.timeout(120)
def test_counts_are_exact(http_sup: HttpSupervisor) -> None:
    http = http_sup.http
    for i in range(7):
        assert http.post("/api/v1/actors/echo/runs?wait=30", json={"i": i}).status_code == 200
    for _ in range(3):
        assert http.post("/api/v1/actors/fail/runs?wait=30").json()["status"] == "failed_permanent"
    text = http.get("/metrics").text
    assert sample(text, "actor_supervisor_runs_total", actor="echo", status="succeeded",
                  reason="") == 7  # fmt: skip
    assert sample(text, "actor_supervisor_runs_total", actor="fail", status="failed_permanent",
                  reason="exit_code") == 3  # fmt: skip
    assert sample(text, "actor_supervisor_run_duration_seconds_count", actor="echo") == 7
    assert sample(text, "actor_supervisor_run_duration_seconds_bucket", actor="echo",
                  le="+Inf") == 7  # fmt: skip
    assert sample(text, "actor_supervisor_actor_consecutive_failures", actor="fail") == 3
    assert sample(text, "actor_supervisor_actor_paused", actor="echo") == 0
    assert sample(text, "actor_supervisor_last_success_timestamp_seconds", actor="echo")
    assert sample(text, "actor_supervisor_last_success_timestamp_seconds", actor="fail") is None
    assert sample(text, "actor_supervisor_next_fire_timestamp_seconds", actor="ticker")
    assert sample(text, "actor_supervisor_workers", state="idle") == 2
    assert sample(text, "actor_supervisor_queue_depth") == 0
    assert sample(text, "actor_supervisor_runs_in_flight") == 0
    assert sample(text, "actor_supervisor_store_degraded") == 0
    assert sample(text, "actor_supervisor_store_spool_depth") == 0
    assert sample(text, "actor_supervisor_busy_rejections_total") == 0
    assert sample(text, "actor_supervisor_worker_restarts_total") == 0
    assert sample(text, "actor_supervisor_fire_lateness_seconds_count") == 1  # the ticker
    assert (sample(text, "actor_supervisor_store_batch_seconds_count") or 0) >= 1
    assert sample(text, "actor_supervisor_process_resident_memory_bytes")
    assert sample(text, "process_resident_memory_bytes")
    # what the store holds agrees with the counters
    store = http_sup.sup.store()
    try:
        finished = [r for r in store.list_runs(limit=1000) if r.actor in ("echo", "fail")]
    finally:
        store.close()
    assert len(finished) == 10


@pytest.mark.timeout(120)
def test_retries_and_pause_gauge(http_sup: HttpSupervisor) -> None:
    http = http_sup.http
    assert http.post("/api/v1/actors/ticker/pause", json={"reason": "metrics"}).status_code == 200
    wait_for(lambda: sample(http.get("/metrics").text, "actor_supervisor_actor_paused",
                            actor="ticker") == 1, 10, "the paused gauge")  # fmt: skip
    assert sample(http.get("/metrics").text, "actor_supervisor_retries_total", actor="echo") is None
