"""``GET /health`` and ``GET /ready``: for load balancers, Kubernetes probes and people.

Both answer from the supervisor's ``metrics`` reply, shared for a quarter of a second, so a
probe at any rate costs the supervisor a few requests a second.
"""

import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from supervisor.http.context import Backend
from supervisor.http.problems import Problem

try:
    VERSION = version("actor-supervisor")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    VERSION = "unknown"


def evaluate(backend: Backend) -> tuple[bool, dict[str, Any]]:
    """``(healthy, body)``, as ``/health`` answers it."""
    try:
        m = backend.cached("metrics")
    except Problem:
        return False, {"status": "unhealthy", "reasons": ["supervisor_unreachable"], "checks": {}}
    now = time.time()
    oldest = m.get("oldest_queued_at")
    checks = {
        "phase": m["phase"],
        "workers_ready": m["workers_ready"],
        "workers_total": m["workers_total"],
        "queue_depth": m["queue_depth"],
        "queue_capacity": m["queue_capacity"],
        "runs_in_flight": m["runs_in_flight"],
        "oldest_queued_age_s": None if oldest is None else round(max(0.0, now - oldest), 3),
        "last_commit_age_s": _rounded(m.get("last_commit_age_s")),
        "store_degraded": m["store_degraded"],
        "store_spool_depth": m["store_spool_depth"],
        "paused_actors": sorted(a[0] for a in m["actors"] if a[1]),
        "uptime_s": round(m["uptime_s"], 3),
        "version": VERSION,
    }
    reasons: list[str] = []
    details: dict[str, Any] = {}
    if m["phase"] != "running":
        reasons.append("draining")
    if m["workers_ready"] == 0:
        reasons.append("no_ready_worker")
    if m["store_degraded"]:
        reasons.append("store_degraded")
        details["store_degraded"] = {"spool_depth": m["store_spool_depth"]}
    if reasons:
        return False, {"status": "unhealthy", "reasons": reasons, "details": details,
                       "checks": checks}  # fmt: skip
    return True, {"status": "healthy", "checks": checks}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def health(request: Request) -> JSONResponse:
    healthy, body = evaluate(request.app.state.backend)
    return JSONResponse(body, status_code=200 if healthy else 503,
                        headers={"Cache-Control": "no-store"})  # fmt: skip


def ready(request: Request) -> JSONResponse:
    """200 once the supervisor runs with a ready worker; 503 while starting or draining."""
    backend: Backend = request.app.state.backend
    try:
        m = backend.cached("metrics")
    except Problem:
        reason = "supervisor_unreachable"
    else:
        if m["phase"] != "running":
            reason = "draining"
        elif m["workers_ready"] == 0:
            reason = "starting"
        else:
            return JSONResponse({"ready": True}, headers={"Cache-Control": "no-store"})
    return JSONResponse({"ready": False, "reason": reason}, status_code=503,
                        headers={"Cache-Control": "no-store"})  # fmt: skip
