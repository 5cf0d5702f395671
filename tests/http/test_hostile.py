"""Malformed and hostile requests at every endpoint: never a 500, never a disturbed supervisor."""

import pytest

from tests.http.conftest import HttpSupervisor

GETS = [
    "/health", "/ready", "/metrics", "/api/v1/openapi.json", "/api/v1/actors",
    "/api/v1/actors/{a}", "/api/v1/actors/{a}/versions", "/api/v1/actors/{a}/code",
    "/api/v1/runs", "/api/v1/runs/{r}", "/api/v1/events", "/", "/actors", "/actors/{a}",
    "/runs/{r}", "/events",
]  # fmt: skip
POSTS = [
    "/api/v1/actors/{a}/runs", "/api/v1/actors/{a}/trigger", "/api/v1/actors/{a}/pause",
    "/api/v1/actors/{a}/resume", "/api/v1/actors/{a}/rollback", "/ui/actors/{a}/pause",
    "/ui/actors/{a}/trigger", "/ui/actors/{a}/rollback", "/login",
]  # fmt: skip
ACTORS = ["echo", "nobody", "..%2F..%2Fetc%2Fpasswd", "%00", "a" * 300, "ech%C3%A9", "%FF%FE"]
RUNS = ["zzzzzzzzzz", "00000000", "../../../etc/passwd", "%2e%2e%2f", "f" * 200, "0" * 7]
QUERIES = [
    "limit=-1", "limit=abc", "limit=99999999999999999999", "since=yesterday", "since=1e400",
    "since=-5", "cursor=%%%", "cursor=W10", "cursor=WzEsMiwzXQ", "status=nope", "actor=%00",
    "actor=../x", "run=zz", "run=" + "0" * 40, "version=../../x", "wait=-1", "wait=nan",
    "wait=1e309", "correlation=" + "x" * 500, "a=1&a=2", "force=maybe",
]  # fmt: skip
BODIES: list[bytes] = [b"{", b"\xff\xfe", b"[" * 10000, b'{"reason": 5}', b"null", b"1e999999",
                       b'"' + b"x" * 100 + b'"', b'{"to_version": 5}', b'{"to_history": "../x"}',
                       b'{"to_version": "1.0.0", "to_history": "a"}',
                       b'{"to_version": "1.0.0", "reason": []}']  # fmt: skip


@pytest.mark.timeout(300)
def test_no_request_produces_a_500(http_sup: HttpSupervisor) -> None:
    http = http_sup.http
    statuses: dict[str, int] = {}
    for template in GETS:
        for actor in ACTORS:
            for run in RUNS[:3]:
                path = template.format(a=actor, r=run)
                for query in ["", *QUERIES]:
                    url = f"{path}?{query}" if query else path
                    statuses[f"GET {url}"] = http.get(url).status_code
    for template in POSTS:
        for actor in ACTORS[:4]:
            path = template.format(a=actor)
            for body in BODIES:
                statuses[f"POST {path} {body[:10]!r}"] = http.post(path, content=body).status_code
            for query in QUERIES[-6:]:
                statuses[f"POST {path}?{query}"] = http.post(f"{path}?{query}").status_code
    for method in ("PUT", "DELETE", "PATCH"):
        for template in GETS[:6] + POSTS[:2]:
            path = template.format(a="echo", r="0" * 8)
            statuses[f"{method} {path}"] = http.request(method, path).status_code
    statuses["GET /static/../../etc/passwd"] = http.get("/static/../../etc/passwd").status_code
    statuses["GET /static/%2e%2e/app.py"] = http.get("/static/%2e%2e/app.py").status_code
    huge = b"x" * (2 << 20)
    response = http.post("/api/v1/actors/echo/runs", content=huge)
    assert response.status_code == 413 and response.json()["code"] == "body_too_large"
    lying = http.post("/api/v1/actors/echo/runs", content=b"{}",
                      headers={"Content-Length": "2", "X-Big": "y" * 8000})  # fmt: skip
    statuses["POST with a big header"] = lying.status_code
    errors = {k: v for k, v in statuses.items() if v >= 500}
    assert not errors, errors
    assert len(statuses) > 1000
    assert "Traceback" not in http_sup.sup.log()
    assert http.get("/health").json()["status"] == "healthy"
    assert http_sup.sup.status()["counters"]["bad_requests"] == 0
