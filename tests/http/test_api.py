"""The REST API against a real supervisor: every endpoint, its errors and its access rules."""

from pathlib import Path

import httpx
import pytest

from supervisor.http.auth import SESSION_COOKIE, session_value
from tests.helpers import wait_for
from tests.http.conftest import HttpSupervisor, start_http, versioned
from tests.supervisor.harness import write_script

PROBLEM = "application/problem+json"


def problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["code"] == code


@pytest.mark.timeout(120)
def test_actors_runs_events_and_errors(http_sup: HttpSupervisor) -> None:
    http = http_sup.http
    names = [a["name"] for a in http.get("/api/v1/actors").json()["actors"]]
    assert names == ["echo", "fail", "sleepy", "ticker", "flaky", "dbcode"]
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
def test_a_configured_token_guards_every_request_but_the_probes(public_tmp: Path) -> None:
    token = "s3cret-token-0123456789"
    running = start_http(public_tmp, token=token)
    try:
        anonymous = httpx.Client(base_url=running.base, timeout=30)
        for path in ("/health", "/ready", "/metrics", "/login", "/static/style.css"):
            assert anonymous.get(path).status_code == 200, path  # probes open on loopback
        for path in ("/api/v1/actors", "/api/v1/runs", "/api/v1/events", "/api/v1/openapi.json"):
            problem(anonymous.get(path), 401, "unauthorized")
        problem(anonymous.post("/api/v1/actors/echo/pause"), 401, "unauthorized")
        wrong = anonymous.post("/api/v1/actors/echo/pause", headers={"Authorization": "Bearer x"})
        problem(wrong, 401, "unauthorized")
        rollback = anonymous.post("/api/v1/actors/dbcode/rollback", json={"to_version": "1.0.0"})
        problem(rollback, 401, "unauthorized")
        page = anonymous.get("/actors")  # the sign-in form, which says where the token is
        assert page.status_code == 401 and 'action="/login"' in page.text
        assert str(public_tmp / "token") in page.text and token not in page.text
        # a session cookie is for pages: it never authorizes an API call
        anonymous.cookies.set(SESSION_COOKIE, session_value(token))
        assert anonymous.get("/actors").status_code == 200
        problem(anonymous.post("/api/v1/actors/echo/pause"), 401, "unauthorized")
        assert running.http.post("/api/v1/actors/echo/pause").status_code == 200
        assert token not in running.sup.log()
        assert token not in str(running.sup.status())
        anonymous.close()
    finally:
        running.http.close()
        running.sup.stop()


@pytest.mark.timeout(120)
def test_without_a_token_file_one_is_generated_private_and_kept(public_tmp: Path) -> None:
    running = start_http(public_tmp)
    path = public_tmp / "state" / "http-token"
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        assert len(running.token) >= 40  # token_urlsafe(32)
        anonymous = httpx.Client(base_url=running.base, timeout=30)
        problem(anonymous.get("/api/v1/runs"), 401, "unauthorized")
        assert anonymous.get("/health").status_code == 200
        assert running.http.get("/api/v1/runs").status_code == 200
        anonymous.close()
        log = running.sup.log()
        assert f"sign in with the token in {path}" in log and running.token not in log
        assert running.token not in str(running.sup.status())
    finally:
        running.http.close()
        running.sup.stop()
    again = start_http(public_tmp)  # a restart keeps the token
    try:
        assert again.token == running.token
        assert again.http.get("/api/v1/actors").status_code == 200
    finally:
        again.http.close()
        again.sup.stop()


@pytest.mark.timeout(120)
def test_runs_list_one_row_per_run_with_its_attempts(http_sup: HttpSupervisor) -> None:
    http = http_sup.http
    flaky = http.post("/api/v1/actors/flaky/runs?wait=60").json()
    assert flaky["attempts"] == 3, flaky  # two retries
    echoes = [http.post("/api/v1/actors/echo/runs?wait=30", json={"i": i}).json()["run_id"]
              for i in range(3)]  # fmt: skip

    every = http.get("/api/v1/runs").json()["runs"]
    assert len(every) == len({r["run_id"] for r in every})  # one row per run
    rows = [r for r in every if r["actor"] != "ticker"]  # the ticker fired at start
    assert len(rows) == 4
    assert [r["run_id"] for r in rows[:3]] == echoes[::-1]  # newest first
    last = rows[3]
    assert (last["run_id"], last["attempt"], last["attempts"]) == (flaky["run_id"], 3, 3)
    assert last["status"] == flaky["status"]
    assert len(http.get(f"/api/v1/runs/{flaky['run_id']}").json()["attempts"]) == 3  # all kept

    seen: list[str] = []
    cursor = None
    while True:
        page = http.get("/api/v1/runs", params={"limit": 1, **({"cursor": cursor} if cursor
                                                               else {})}).json()  # fmt: skip
        seen += [r["run_id"] for r in page["runs"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == [r["run_id"] for r in every]
    only = http.get("/api/v1/runs", params={"actor": "flaky", "status": flaky["status"]})
    assert [r["run_id"] for r in only.json()["runs"]] == [flaky["run_id"]]
    succeeded = http.get("/api/v1/runs", params={"status": "succeeded", "actor": "echo"})
    assert succeeded.json()["runs"] == rows[:3]
    assert http.get("/api/v1/runs", params={"since": "2999-01-01T00:00Z"}).json()["runs"] == []
    problem(http.get("/api/v1/runs", params={"cursor": "bm9wZQ"}), 400, "bad_parameter")


@pytest.mark.timeout(120)
def test_events_newest_first_past_the_limit(http_sup: HttpSupervisor) -> None:
    http = http_sup.http
    runs = [http.post("/api/v1/actors/echo/runs?wait=30", json={"i": i}).json()["run_id"]
            for i in range(4)]  # fmt: skip
    store = http_sup.sup.store()
    try:
        stored = store.list_events(limit=100_000)  # oldest first
    finally:
        store.close()
    assert len(stored) > 12

    first = http.get("/api/v1/events", params={"limit": 5}).json()
    assert first["events"][0]["aggregate_id"] == runs[-1]  # the newest is on the first page
    assert first["events"][0]["event_type"] == "run_succeeded"
    seen: list[str] = []
    page = first
    while True:
        times = [e["created_at"] for e in page["events"]]
        assert times == sorted(times, reverse=True)
        seen += [e["event_id"] for e in page["events"]]
        if page["next_cursor"] is None:
            break
        page = http.get("/api/v1/events", params={"limit": 5, "cursor": page["next_cursor"]}).json()
    assert seen == [e.event_id for e in reversed(stored)]  # every event once, newest first

    one = http.get("/api/v1/events", params={"run": runs[0], "limit": 2}).json()
    assert [e["event_type"] for e in one["events"]] == ["run_succeeded", "run_started"]
    rest = http.get("/api/v1/events", params={"run": runs[0], "cursor": one["next_cursor"]})
    assert [e["event_type"] for e in rest.json()["events"]] == ["run_queued"]
    assert rest.json()["next_cursor"] is None
    problem(http.get("/api/v1/events", params={"cursor": "%%%"}), 400, "bad_parameter")


@pytest.mark.timeout(120)
def test_actors_list_their_last_run(http_sup: HttpSupervisor) -> None:
    http = http_sup.http
    ok = http.post("/api/v1/actors/echo/runs?wait=30", json={}).json()
    failed = http.post("/api/v1/actors/fail/runs?wait=30").json()
    actors = {a["name"]: a for a in http.get("/api/v1/actors").json()["actors"]}
    echo, fail = actors["echo"]["last_run"], actors["fail"]["last_run"]
    assert (echo["run_id"], echo["status"], echo["reason"]) == (ok["run_id"], "succeeded", None)
    assert echo["finished_at"] is not None
    assert (fail["run_id"], fail["status"]) == (failed["run_id"], "failed_permanent")
    assert fail["reason"] == failed["reason"] and fail["reason"]
    assert actors["sleepy"]["last_run"] is None


@pytest.mark.timeout(120)
def test_rollback_makes_an_earlier_version_active_and_used(http_sup: HttpSupervisor) -> None:
    http, sup = http_sup.http, http_sup.sup
    assert http.post("/api/v1/actors/dbcode/runs?wait=30", json={}).json()["output"] == {
        "version": 1
    }
    write_script(sup.folder, "dbcode.py", versioned(2))
    deployed = sup.cli("deploy", "dbcode")
    assert deployed.returncode == 0, deployed.stderr
    assert http.post("/api/v1/actors/dbcode/runs?wait=30", json={}).json()["output"] == {
        "version": 2
    }

    problem(http.post("/api/v1/actors/dbcode/rollback"), 400, "bad_json")
    problem(http.post("/api/v1/actors/dbcode/rollback", json={}), 400, "bad_parameter")
    both = {"to_version": "1.0.0", "to_history": "x"}
    problem(http.post("/api/v1/actors/dbcode/rollback", json=both), 400, "bad_parameter")
    problem(http.post("/api/v1/actors/dbcode/rollback", json={"to_version": 1}), 400,
            "bad_parameter")  # fmt: skip
    problem(http.post("/api/v1/actors/dbcode/rollback", json={"to_version": "9.9.9"}), 404,
            "unknown_version")  # fmt: skip
    problem(http.post("/api/v1/actors/nobody/rollback", json={"to_version": "1.0.0"}), 404,
            "unknown_actor")  # fmt: skip
    refused = http.post("/api/v1/actors/echo/rollback", json={"to_version": "1.0.0"})
    problem(refused, 409, "file_mode")  # echo runs its file: the CLI needs --write-file
    assert "--write-file" in refused.json()["detail"]

    answer = http.post("/api/v1/actors/dbcode/rollback",
                       json={"to_version": "1.0.0", "reason": "v2 is broken"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["recorded"] and result["refreshed"], result
    assert (result["rolled_back_to"], result["version"]) == ("1.0.0", "1.0.2")
    versions = http.get("/api/v1/actors/dbcode/versions").json()["versions"]
    assert versions[0]["active"] and versions[0]["change_type"] == "rollback"
    assert "v2 is broken" in versions[0]["change_reason"]
    assert http.post("/api/v1/actors/dbcode/runs?wait=30", json={}).json()["output"] == {
        "version": 1
    }  # the supervisor picked the change up (refresh), no restart
    history = versions[-1]["history_id"]  # 1.0.0 by its history id: already active
    again = http.post("/api/v1/actors/dbcode/rollback", json={"to_history": history}).json()
    assert not again["recorded"] and again["skipped"] == "unchanged"

    doc = http.get("/api/v1/openapi.json").json()
    body = doc["paths"]["/actors/{name}/rollback"]["post"]["requestBody"]
    assert set(body["content"]["application/json"]["schema"]["properties"]) >= {
        "to_version", "to_history"
    }  # fmt: skip
