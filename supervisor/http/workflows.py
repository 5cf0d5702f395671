"""The workflow endpoints under ``/api/v1/`` (issue 14).

``POST /workflows/{name}/runs`` with ``{"items": [...]}`` starts a workflow run: 202 once the
run and its items are committed. ``GET /workflows`` lists the configured workflows and the
unfinished runs (asking the supervisor); ``GET /workflow-runs`` and ``/workflow-runs/{id}``
read progress from the store; ``POST /workflow-runs/{id}/resume`` and ``.../cancel`` are
control requests.
"""

import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from supervisor.cli.workflow import progress
from supervisor.http.api import backend_of, int_param, read_json, resolve_id
from supervisor.http.auth import require_token
from supervisor.http.problems import Problem

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


async def start_run(request: Request) -> JSONResponse:
    backend = backend_of(request)
    require_token(backend, request)
    body = await read_json(request, allow_empty=False)
    name = request.path_params["name"]
    if not NAME.match(name):
        raise Problem(404, "unknown_workflow", "no workflow by that name")
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise Problem(400, "bad_json", 'expected {"items": [item, ...]} with at least one item')
    data: dict[str, Any] = await run_in_threadpool(
        lambda: backend.call(lambda c: c.run_workflow(name, items))
    )
    location = f"/api/v1/workflow-runs/{data['workflow_run_id']}"
    return JSONResponse(data, status_code=202, headers={"Location": location})


def list_workflows(request: Request) -> JSONResponse:
    backend = backend_of(request)
    return JSONResponse(backend.call(lambda c: c.workflows()))


def list_runs(request: Request) -> JSONResponse:
    backend = backend_of(request)
    limit = int_param(request, "limit", 50, 1, 1000)
    workflow = request.query_params.get("workflow")
    runs = backend.read(lambda s: s.workflow_runs(workflow=workflow, limit=limit))
    return JSONResponse({"workflow_runs": [progress(r) for r in runs]})


def _resolve(request: Request) -> str:
    """The whole id, as run ids are resolved: 400 ``bad_parameter`` (malformed, or a prefix
    under 8 characters), 404 ``unknown_workflow_run``, 409 ``ambiguous_id``."""
    return resolve_id(backend_of(request), "workflow_run", request.path_params["run_id"].lower())


def get_run(request: Request) -> JSONResponse:
    run_id = _resolve(request)
    run = backend_of(request).read(lambda s: s.workflow_run(run_id))
    if run is None:  # resolved a moment ago: only a prune removes a run
        raise Problem(404, "unknown_workflow_run", f"workflow run {run_id} is gone")
    return JSONResponse(progress(run))


async def control_run(request: Request) -> JSONResponse:
    backend = backend_of(request)
    require_token(backend, request)
    await read_json(request)  # a body is ignored, but still bounded
    run_id = _resolve(request)
    action = request.path_params["action"]
    if action not in ("resume", "cancel"):
        raise Problem(404, "not_found", "POST .../resume or .../cancel")
    data = await run_in_threadpool(lambda: backend.call(lambda c: c.workflow(action, run_id)))
    return JSONResponse(data)


def routes() -> list[Route]:
    """Mounted under ``/api/v1`` by :mod:`supervisor.http.app`."""
    return [
        Route("/workflows", list_workflows),
        Route("/workflows/{name}/runs", start_run, methods=["POST"]),
        Route("/workflow-runs", list_runs),
        Route("/workflow-runs/{run_id}", get_run),
        Route("/workflow-runs/{run_id}/{action}", control_run, methods=["POST"]),
    ]
