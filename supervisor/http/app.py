"""The Starlette application: routes, the access rule, and errors as problem+json.

No request can produce a 500: every expected failure is a :class:`Problem`, Starlette's own
404 and 405 become problems too, and anything unexpected is logged and answered as a problem
(``internal_error``) without a traceback in the response.
"""

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from supervisor.http import api, health, metrics, pages, workflows
from supervisor.http.auth import CHALLENGE, UNAUTHORIZED, is_api, is_open, token_ok
from supervisor.http.context import Backend
from supervisor.http.openapi import document
from supervisor.http.problems import Problem, problem_response
from supervisor.http.settings import HttpSettings

log = logging.getLogger(__name__)

OPENAPI_PATH = "/api/v1/openapi.json"
HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    400: "bad_request",
    413: "body_too_large",
}


class Guard(BaseHTTPMiddleware):
    """Every request needs the token but ``/login``, ``/static/`` and, on loopback only, the
    probes (see :mod:`supervisor.http.auth`). A page asked for without it answers 401 with the
    sign-in form; an API call, a 401 problem."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        backend: Backend = request.app.state.backend
        path = request.url.path
        if not is_open(backend, path):
            api_call = is_api(path)
            # the session cookie: pages, and the API document the dashboard links to (a read
            # without run data; no other API call takes a cookie)
            cookie = not api_call or (path == OPENAPI_PATH and request.method in ("GET", "HEAD"))
            if not token_ok(backend, request, cookie=cookie):
                if not api_call and request.method in ("GET", "HEAD"):
                    return pages.login_required(request)
                return problem_response(*UNAUTHORIZED, dict(CHALLENGE))
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response


def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.openapi)


def _routes() -> list[BaseRoute]:
    a = api
    return [
        Route("/health", health.health),
        Route("/ready", health.ready),
        Route("/metrics", metrics.metrics),
        Mount("/api/v1", routes=[
            Route("/openapi.json", openapi),
            Route("/actors", a.list_actors),
            Route("/actors/{name}", a.get_actor),
            Route("/actors/{name}/runs", a.submit_run, methods=["POST"]),
            Route("/actors/{name}/trigger", a.trigger_actor, methods=["POST"]),
            Route("/actors/{name}/pause", a.pause_actor, methods=["POST"]),
            Route("/actors/{name}/resume", a.resume_actor, methods=["POST"]),
            Route("/actors/{name}/rollback", a.rollback_actor, methods=["POST"]),
            Route("/actors/{name}/versions", a.actor_versions),
            Route("/actors/{name}/code", a.actor_code),
            Route("/runs", a.list_runs),
            Route("/runs/{run_id}", a.get_run),
            Route("/runs/{run_id}/rerun", a.rerun_run, methods=["POST"]),
            Route("/runs/{run_id}/cancel", a.cancel_run, methods=["POST"]),
            Route("/events", a.list_events),
            Route("/alerts", a.list_alerts),
            *workflows.routes(),
        ]),
        *pages.routes(),
    ]  # fmt: skip


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    if is_api(request.url.path) or not exc.status:
        return problem_response(exc.status, exc.code, exc.detail, exc.headers)
    return pages.error_page(request, exc)


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    return await _on_problem(
        request, Problem(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))
    )


async def _on_error(request: Request, exc: Exception) -> Response:
    log.error("http: %s %s failed", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "internal_error", "the request failed; see the server log")


def build_app(settings: HttpSettings) -> Starlette:
    handlers: dict[Any, Any] = {
        Problem: _on_problem,
        HTTPException: _on_http,
        Exception: _on_error,
    }
    app = Starlette(routes=_routes(), middleware=[Middleware(Guard)], exception_handlers=handlers)
    backend = Backend(settings)
    app.state.backend = backend
    app.state.registry = metrics.build_registry(backend)
    app.state.openapi = document()
    pages.setup(app)
    return app
