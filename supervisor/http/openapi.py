"""The OpenAPI 3.1 document served at ``/api/v1/openapi.json``, built from one table."""

from typing import Any

from supervisor.http.health import VERSION

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_RUN = {"name": "run_id", "in": "path", "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{8,32}$"},
        "description": "a run id or a unique prefix of at least 8 characters"}  # fmt: skip


def _q(name: str, kind: str = "string", text: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind},
            "description": text}  # fmt: skip


# (method, path, summary, parameters, mutating, success status)
ROUTES: list[tuple[str, str, str, list[dict[str, Any]], bool, str]] = [
    ("get", "/actors", "Every actor: schedule, next fire, last run (id, status, reason, "
     "finished_at), paused, failures, code, drift",
     [], False, "200"),
    ("get", "/actors/{name}", "One actor, with its last run and active code version",
     [_NAME], False, "200"),
    ("post", "/actors/{name}/runs", "Submit a run; the body is its input. 202 with the run id, "
     "or with ?wait=SECONDS the final outcome",
     [_NAME, _q("wait", "number", "seconds to wait for the outcome"),
      {"name": "Idempotency-Key", "in": "header", "required": False,
       "schema": {"type": "string"}}], True, "202"),
    ("post", "/actors/{name}/trigger", "Run now, outside the schedule (?force=true if paused)",
     [_NAME, _q("force", "boolean")], True, "202"),
    ("post", "/actors/{name}/pause", 'Pause scheduled runs; body {"reason": "..."}',
     [_NAME], True, "200"),
    ("post", "/actors/{name}/resume", "Resume a paused actor", [_NAME], True, "200"),
    ("post", "/actors/{name}/rollback", 'Make an earlier code version active again, as the CLI '
     '`rollback` does, and have the supervisor use it; body {"to_version": "x.y.z"} or '
     '{"to_history": "id"}, optional "reason". 409 file_mode for an actor that runs its file '
     "(roll back with the CLI's --write-file)", [_NAME], True, "200"),
    ("get", "/actors/{name}/versions", "Code versions, newest first",
     [_NAME, _q("limit", "integer")], False, "200"),
    ("get", "/actors/{name}/code", "The stored code of a version (default: the active one)",
     [_NAME, _q("version")], False, "200"),
    ("get", "/runs", "Runs, one row each (its latest attempt, with `attempts`), newest first "
     "by that attempt's queue time; cursor pagination; filters apply to the latest attempt",
     [_q("actor"), _q("status"), _q("since", text="ISO-8601 or epoch seconds"),
      _q("limit", "integer"), _q("cursor", text="next_cursor of the previous page")],
     False, "200"),
    ("get", "/runs/{run_id}", "A run, as `actor-supervisor show --json` prints it: its outcome "
     "(status, reason, error, output, stderr_tail), every attempt (times, exit code, worker, "
     "code version), its events, and its rerun links (rerun_of, reruns)", [_RUN], False, "200"),
    ("post", "/runs/{run_id}/rerun", "A new run of the run's actor with the same input, linked "
     "to it (rerun_of). 202 with the new run id, or with ?wait=SECONDS its final outcome",
     [_RUN, _q("wait", "number", "seconds to wait for the outcome")], True, "202"),
    ("post", "/runs/{run_id}/cancel", "Cancel a run: a queued one never starts, a running one "
     "is killed; answered with its one recorded outcome (status cancelled, or how it ended if "
     "it finished first). 409 not_cancellable for a finished run", [_RUN], True, "200"),
    ("get", "/events", "Events, newest first, with cursor pagination",
     [_q("run"), _q("actor"), _q("correlation"), _q("since"), _q("limit", "integer"),
      _q("cursor", text="next_cursor of the previous page")],
     False, "200"),
    ("get", "/alerts", "The alert outbox, newest first: each alert's destination, event, actor, "
     "run, count, status (pending, delivered, failed), attempts and last error",
     [_q("status", text="pending, delivered or failed"),
      _q("destination", text="an [[alerts]] entry's name"), _q("limit", "integer")],
     False, "200"),
    ("get", "/workflows", "Configured workflows and the progress of unfinished workflow runs",
     [], False, "200"),
    ("post", "/workflows/{name}/runs", 'Start a workflow run; body {"items": [...]}. 202 once '
     "the run and its items are committed", [_NAME], True, "202"),
    ("get", "/workflow-runs", "Workflow runs with progress (done, failed, total, wave), newest "
     "first", [_q("workflow"), _q("limit", "integer")], False, "200"),
    ("get", "/workflow-runs/{run_id}", "One workflow run's progress",
     [_RUN], False, "200"),
    ("post", "/workflow-runs/{run_id}/resume", "Resume a paused workflow run (and its paused "
     "step actors)", [_RUN], True, "200"),
    ("post", "/workflow-runs/{run_id}/cancel", "Cancel a workflow run: no new steps",
     [_RUN], True, "200"),
]  # fmt: skip


ROLLBACK_BODY = {
    "type": "object",
    "properties": {
        "to_version": {"type": "string", "description": "the version tag to make active again"},
        "to_history": {"type": "string", "description": "the history id to make active again"},
        "reason": {"type": "string", "maxLength": 1000, "description": "kept with the rollback"},
    },
    "oneOf": [{"required": ["to_version"]}, {"required": ["to_history"]}],
}


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path, summary, params, mutating, ok in ROUTES:
        operation: dict[str, Any] = {
            "summary": summary,
            "parameters": params,
            "responses": {
                ok: {"description": "OK", "content": {"application/json": {}}},
                "4XX": _PROBLEM,
                "5XX": _PROBLEM,
            },
        }
        if mutating:
            operation["security"] = [{"bearer": []}]
            operation["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": {}}},
            }
        paths.setdefault(path, {})[method] = operation
    paths["/actors/{name}/rollback"]["post"]["requestBody"] = {"required": True, "content": {
        "application/json": {"schema": ROLLBACK_BODY}}}  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": "actor-supervisor", "version": VERSION},
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Problem": {
                    "description": "RFC 9457 problem; `code` is stable: unknown_actor, paused, "
                    "busy, bad_json, bad_parameter, body_too_large, unauthorized, unknown_run, "
                    "ambiguous_id, not_cancellable, wait_timeout, supervisor_unreachable, "
                    "store_unavailable, ...",
                    "content": {"application/problem+json": {"schema": {
                        "type": "object", "required": ["status", "code", "detail"],
                        "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                                       "status": {"type": "integer"},
                                       "code": {"type": "string"},
                                       "detail": {"type": "string"}},
                    }}},
                }
            },
        },
    }  # fmt: skip
