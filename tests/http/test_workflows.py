"""The workflow endpoints on a real supervisor: start a run over HTTP, read its progress."""

from pathlib import Path

from tests.helpers import wait_for
from tests.http.conftest import start_http

WORKFLOW = """
[[workflows]]
name = "twice"
steps = ["echo", "dbcode"]
chunk_size = 2

[[workflows]]
name = "slow"
steps = ["sleepy"]
"""


def test_post_a_workflow_run_then_read_its_progress(public_tmp: Path) -> None:
    running = start_http(public_tmp, settings=WORKFLOW)
    http = running.http
    try:
        items = [{"id": f"doc-{n}", "n": n} for n in range(3)]
        started = http.post("/api/v1/workflows/twice/runs", json={"items": items})
        assert started.status_code == 202, started.text
        body = started.json()
        assert (body["items"], body["waves"], body["steps"]) == (3, 2, ["echo", "dbcode"])
        location = started.headers["location"]

        def done() -> dict[str, object] | None:
            found = http.get(location).json()
            return found if found["finished_at"] else None

        progress = wait_for(done, 60, "the workflow run to finish")
        assert (progress["status"], progress["done"], progress["items"]) == ("succeeded", 3, 3)
        listed = http.get("/api/v1/workflow-runs").json()["workflow_runs"]
        assert [r["workflow_run_id"] for r in listed] == [body["workflow_run_id"]]
        configured = http.get("/api/v1/workflows").json()["workflows"]
        assert [w["name"] for w in configured] == ["twice", "slow"]

        unknown = http.post("/api/v1/workflows/nope/runs", json={"items": [1]})
        assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_workflow")
        empty = http.post("/api/v1/workflows/twice/runs", json={"items": []})
        assert (empty.status_code, empty.json()["code"]) == (400, "bad_json")
        repeated = http.post("/api/v1/workflows/twice/runs", json={"items": [{"id": 1}, {"id": 1}]})
        assert (repeated.status_code, repeated.json()["code"]) == (400, "bad_request")
        anonymous = http.post("/api/v1/workflows/twice/runs", json={"items": [1]},
                              headers={"Authorization": ""})  # fmt: skip
        assert anonymous.status_code == 401
        cancel = http.post(f"/api/v1/workflow-runs/{body['workflow_run_id']}/cancel")
        assert (cancel.status_code, cancel.json()["code"]) == (404, "unknown_workflow_run")

        slow = http.post("/api/v1/workflows/slow/runs", json={"items": [{"seconds": 30}]})
        slow_id = slow.json()["workflow_run_id"]
        wait_for(lambda: slow_id[:12] in http.get("/").text, 30, "the dashboard to show the run")
        assert 'id="workflows"' in http.get("/").text
        cancelled = http.post(f"/api/v1/workflow-runs/{slow_id[:10]}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["cancelled_steps"] == 1  # its running step is killed
        ended = wait_for(lambda: (p := http.get(f"/api/v1/workflow-runs/{slow_id[:16]}").json())
                         ["finished_at"] and p, 60, "the cancelled run to finish")  # fmt: skip
        assert (ended["status"], ended["failed"], ended["done"]) == ("cancelled", 1, 1)
        for text, status, code in (("0123456", 400, "bad_parameter"),
                                   ("ffffffff", 404, "unknown_workflow_run")):  # fmt: skip
            got = http.get(f"/api/v1/workflow-runs/{text}")
            assert (got.status_code, got.json()["code"]) == (status, code)
        first = body["workflow_run_id"]  # started < 16 s before: 8+ leading digits in common
        shared = next(n for n, (a, b) in enumerate(zip(first, slow_id, strict=True)) if a != b)
        if shared >= 8:
            ambiguous = http.get(f"/api/v1/workflow-runs/{slow_id[:shared]}")
            assert (ambiguous.status_code, ambiguous.json()["code"]) == (409, "ambiguous_id")
    finally:
        http.close()
        running.sup.stop()
