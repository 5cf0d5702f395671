"""Runs through the HTTP API: the run document ``show --json`` prints, rerun and cancel, and
ids by unique prefix, resolved by the same store method as the CLI's."""

import re

import httpx
import orjson
import pytest

from tests.helpers import wait_for
from tests.http.conftest import HttpSupervisor, versioned
from tests.http.test_api import problem
from tests.supervisor.harness import write_script


def runs_sharing_a_prefix(http: httpx.Client) -> tuple[str, str, str]:
    """Two finished echo runs whose ids share at least 8 characters, and that prefix."""
    first = http.post("/api/v1/actors/echo/runs?wait=30", json={}).json()["run_id"]
    while True:
        second = http.post("/api/v1/actors/echo/runs?wait=30", json={}).json()["run_id"]
        same = [a == b for a, b in zip(first, second, strict=True)] + [False]
        if same.index(False) >= 8:
            return first, second, first[: same.index(False)]
        first = second


@pytest.mark.timeout(120)
def test_the_run_document_rerun_and_cancel(http_sup: HttpSupervisor) -> None:
    http = http_sup.http
    flaky = http.post("/api/v1/actors/flaky/runs?wait=30", json={"x": 1}).json()
    assert flaky["attempts"] == 3
    doc = http.get(f"/api/v1/runs/{flaky['run_id'][:16]}").json()
    shown = http_sup.sup.cli("show", flaky["run_id"][:16], "--json")
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout) == doc  # one document for the CLI and the API
    assert [a["status"] for a in doc["attempts"]] == ["failed_retryable"] * 3
    assert doc["status"] == "failed_retryable" and doc["error"] == flaky["error"]

    first, second, common = runs_sharing_a_prefix(http)
    ambiguous = http.get(f"/api/v1/runs/{common}")
    problem(ambiguous, 409, "ambiguous_id")
    assert first in ambiguous.json()["detail"] and second in ambiguous.json()["detail"]
    problem(http.post(f"/api/v1/runs/{common}/rerun"), 409, "ambiguous_id")
    problem(http.get(f"/api/v1/runs/{first[:7]}"), 400, "bad_parameter")
    problem(http.post("/api/v1/runs/ffffffffff/cancel"), 404, "unknown_run")
    problem(http.get("/api/v1/events", params={"run": common}), 409, "ambiguous_id")

    with httpx.Client(base_url=http_sup.base, timeout=30.0) as anonymous:
        problem(anonymous.post(f"/api/v1/runs/{first}/rerun"), 401, "unauthorized")
        problem(anonymous.post(f"/api/v1/runs/{first}/cancel"), 401, "unauthorized")

    accepted = http.post(f"/api/v1/runs/{first[:20]}/rerun")
    assert accepted.status_code == 202, accepted.text
    new = accepted.json()["run_id"]
    assert accepted.headers["location"] == f"/api/v1/runs/{new}"
    assert accepted.json()["rerun_of"] == first
    waited = http.post(f"/api/v1/runs/{new}/rerun?wait=30").json()
    assert waited["status"] == "succeeded" and waited["rerun_of"] == new
    assert http.get(f"/api/v1/runs/{waited['run_id']}").json()["rerun_of"] == new
    assert http.get(f"/api/v1/runs/{first}").json()["reruns"] == [new]

    slow = http.post("/api/v1/actors/sleepy/runs", json={"seconds": 60}).json()["run_id"]
    wait_for(lambda: http.get(f"/api/v1/runs/{slow}").json()["status"] == "running",
             30, "the slow run to start")  # fmt: skip
    cancelled = http.post(f"/api/v1/runs/{slow[:16]}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["reason"]) == ("cancelled", "cancelled")
    run = http.get(f"/api/v1/runs/{slow}").json()
    assert [e["event_type"] for e in run["events"]][-1] == "run_cancelled"
    refused = http.post(f"/api/v1/runs/{slow}/cancel")
    problem(refused, 409, "not_cancellable")
    assert "cancelled" in refused.json()["detail"]

    # the run page's buttons: forms with the page's CSRF token, as a browser posts them
    page = http.get(f"/runs/{first}")
    assert page.status_code == 200 and f"/ui/runs/{first}/rerun" in page.text
    assert f"/ui/runs/{first}/cancel" not in page.text  # finished: nothing to cancel
    assert f'href="/runs/{new}"' in page.text  # its rerun
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    problem_page = http.post(f"/ui/runs/{first}/rerun", data={})
    assert problem_page.status_code == 403  # no CSRF token: refused
    clicked = http.post(f"/ui/runs/{first}/rerun", data={"csrf": csrf.group(1)})
    assert clicked.status_code == 303, clicked.text
    again = clicked.headers["location"].removeprefix("/runs/")
    assert again != first and http.get(f"/api/v1/runs/{again}").json()["rerun_of"] == first
    assert f"/runs/{first}" in http.get(f"/runs/{again}").text

    # a rollback's to_history takes a prefix too, resolved by the same store method
    first_version = http.get("/api/v1/actors/dbcode/versions").json()["versions"][-1]
    write_script(http_sup.sup.folder, "dbcode.py", versioned(2))
    assert http_sup.sup.cli("deploy", "dbcode").returncode == 0
    back = http.post(
        "/api/v1/actors/dbcode/rollback", json={"to_history": first_version["history_id"][:16]}
    )
    assert back.status_code == 200 and back.json()["rolled_back_to"] == "1.0.0", back.text
    short = http.post("/api/v1/actors/dbcode/rollback", json={"to_history": "abc"})
    problem(short, 400, "bad_parameter")
    assert http.post("/api/v1/actors/dbcode/runs?wait=30", json={}).json()["output"] == {
        "version": 1
    }

    paths = http.get("/api/v1/openapi.json").json()["paths"]
    for path in ("/runs/{run_id}/rerun", "/runs/{run_id}/cancel"):
        assert paths[path]["post"]["security"] == [{"bearer": []}]
