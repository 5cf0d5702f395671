"""The REST API against a real supervisor: every endpoint, its errors and its access rules."""

from pathlib import Path

import httpx
import pytest

from tests.http.conftest import HttpSupervisor, start_http
from tests.supervisor.harness import wait_for

PROBLEM = "application/problem+json"


def problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["code"] == code


@pytest.mark.timeout(120)
def test_actors_runs_events_and_errors(http_sup: HttpSupervisor) -> None:
    http = http_sup.http
    names = [a["name"] for a in http.get("/api/v1/actors").json()["actors"]]
    assert names == ["echo", "fail", "sleepy", "ticker"]
    problem(http.get("/api/v1/actors/nobody"), 404, "unknown_actor")
    problem(http.post("/api/v1/actors/nobody/runs"), 404, "unknown_actor")

    accepted = http.post("/api/v1/actors/echo/runs", json={"n": 1})
    assert accepted.status_code == 202
    run_id = accepted.json()["run_id"]
    done = http.post("/api/v1/actors/echo/runs?wait=30", json={"n": 2}).json()
    assert done["status"] == "succeeded" and done["output"] == {"echo": {"n": 2}}
    again = http.post("/api/v1/actors/echo/runs", json={}, headers={"Idempotency-Key": "k1"})
    same = http.post("/api/v1/actors/echo/runs", json={}, headers={"Idempotency-Key": "k1"})
    assert same.json()["run_id"] == again.json()["run_id"] and same.json()["deduplicated"]

    assert http.post("/api/v1/actors/echo/pause", json={"reason": "api test"}).json()["paused"]
    problem(http.post("/api/v1/actors/echo/trigger"), 409, "paused")
    assert http.post("/api/v1/actors/echo/trigger?force=true").status_code == 202
    actor = http.get("/api/v1/actors/echo").json()
    assert actor["paused"] and actor["paused_reason"] == "api test"
    assert actor["active_version"]["version_tag"] == "1.0.0"
    assert http.post("/api/v1/actors/echo/resume").json() == {"actor": "echo", "paused": False}

    wait_for(lambda: http.get(f"/api/v1/runs/{run_id}").json()["status"] == "succeeded",
             30, "the first run to finish")  # fmt: skip
    run = http.get(f"/api/v1/runs/{run_id}").json()
    assert run["attempts"][0]["input"] == {"n": 1}
    assert [e["event_type"] for e in run["events"]][:2] == ["run_queued", "run_started"]
    problem(http.get("/api/v1/runs/0000000000000000"), 404, "unknown_run")
    problem(http.get("/api/v1/runs/abc"), 400, "bad_parameter")
    prefix = run_id[:8]
    answer = http.get(f"/api/v1/runs/{prefix}")
    assert answer.status_code in (200, 409)  # time-ordered ids: 8 characters may be shared
    assert http.get(f"/api/v1/runs/{run_id[:24]}").json()["run_id"] == run_id

    events = http.get("/api/v1/events", params={"run": run_id}).json()["events"]
    assert {e["aggregate_id"] for e in events} == {run_id}
    versions = http.get("/api/v1/actors/echo/versions").json()["versions"]
    assert versions[0]["active"] and "script_code" not in versions[0]
    code = http.get("/api/v1/actors/echo/code", params={"version": "1.0.0"}).json()
    assert "json.load" in code["script_code"]
    problem(http.get("/api/v1/actors/echo/code", params={"version": "9.9.9"}), 404,
            "unknown_version")  # fmt: skip


@pytest.mark.timeout(120)
def test_cursor_pagination_visits_every_attempt_once(http_sup: HttpSupervisor) -> None:
    http = http_sup.http
    for i in range(7):
        http.post("/api/v1/actors/echo/runs?wait=30", json={"i": i})
    seen: list[tuple[str, int]] = []
    cursor = None
    while True:
        params = {"actor": "echo", "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = http.get("/api/v1/runs", params=params).json()
        seen += [(r["run_id"], r["attempt"]) for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 7
    queued = [r["queued_at"] for r in http.get("/api/v1/runs?actor=echo").json()["runs"]]
    assert queued == sorted(queued, reverse=True)
    ok = http.get("/api/v1/runs", params={"status": "succeeded", "actor": "echo"}).json()
    assert len(ok["runs"]) == 7


@pytest.mark.timeout(120)
def test_token_guards_mutations(public_tmp: Path) -> None:
    token = "s3cret-token-0123456789"
    running = start_http(public_tmp, token=token)
    try:
        anonymous = httpx.Client(base_url=running.base, timeout=30)
        assert anonymous.get("/api/v1/actors").status_code == 200  # reads stay open on loopback
        problem(anonymous.post("/api/v1/actors/echo/pause"), 401, "unauthorized")
        wrong = anonymous.post("/api/v1/actors/echo/pause", headers={"Authorization": "Bearer x"})
        problem(wrong, 401, "unauthorized")
        assert running.http.post("/api/v1/actors/echo/pause").status_code == 200
        assert token not in running.sup.log()
        assert token not in str(running.sup.status())
        anonymous.close()
    finally:
        running.http.close()
        running.sup.stop()
