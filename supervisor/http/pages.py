"""The dashboard: server-rendered pages (Jinja2), usable without JavaScript.

Pages read what the API reads (the supervisor's ``status``, the store read-only). Buttons are
plain forms that post to ``/ui/...`` with a CSRF token, then redirect back (303). Charts are
SVG drawn here. ``static/app.js`` only adds auto-refresh and local times.
"""

import difflib
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from protocol.client import Accepted
from supervisor.events import short_id
from supervisor.http import api
from supervisor.http.auth import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    Csrf,
    given_token_ok,
    require_token,
    session_value,
)
from supervisor.http.context import Backend
from supervisor.http.health import VERSION, evaluate
from supervisor.http.problems import Problem
from supervisor.records import RunRecord
from supervisor.runview import run_document

HERE = Path(__file__).parent
MAX_FORM_BYTES = 16 << 10


def _when(ts: float | None) -> dict[str, Any] | None:
    """A timestamp for templates: ISO (UTC), a UTC text and a relative text."""
    if ts is None:
        return None
    moment = datetime.fromtimestamp(ts, UTC)
    return {"iso": moment.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "text": moment.strftime("%Y-%m-%d %H:%M:%S UTC"), "ago": relative(ts)}  # fmt: skip


def relative(ts: float, now: float | None = None) -> str:
    delta = (time.time() if now is None else now) - ts
    future, delta = delta < 0, abs(delta)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if delta >= size or unit == "s":
            text = f"{int(delta // size)} {unit}"
            return f"in {text}" if future else f"{text} ago"
    return "now"  # pragma: no cover


def _iso_ts(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def schedule_words(schedule: dict[str, Any] | None) -> str:
    if not schedule:
        return "on demand"
    kind = schedule.get("type")
    if kind == "interval":
        seconds = float(schedule.get("seconds", 0))
        for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
            if seconds >= size and seconds % size == 0:
                n = int(seconds // size)
                return f"every {unit}" if n == 1 else f"every {n} {unit}s"
        return f"every {seconds:g} seconds"
    if kind == "cron":
        tz = schedule.get("timezone")
        return f"cron {schedule.get('expression')}" + (f" ({tz})" if tz else "")
    if kind == "immediate":
        return "once, at start"
    details = " ".join(f"{k}={v}" for k, v in schedule.items() if k != "type")
    return f"{kind} {details}".strip()


def bars(values: list[float], *, width: int = 600, height: int = 80,
         marks: list[float] | None = None) -> dict[str, Any]:  # fmt: skip
    """An SVG bar chart's rectangles (``marks``: a second series drawn on top, in red)."""
    top = max([*values, *(marks or [])], default=0.0) or 1.0  # the tallest bar fills it
    step = width / max(len(values), 1)
    rects = []
    for i, value in enumerate(values):
        h = value / top * (height - 2)
        mark = (marks[i] / top * (height - 2)) if marks else 0.0
        rects.append({"x": round(i * step, 1), "w": round(max(step - 1, 1), 1),
                      "h": round(h, 1), "y": round(height - h, 1), "mh": round(mark, 1),
                      "my": round(height - mark, 1), "v": value,
                      "m": marks[i] if marks else 0})  # fmt: skip
    return {"rects": rects, "width": width, "height": height, "top": top}


class Pages:
    def __init__(self) -> None:
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(version=VERSION, quote=quote)
        self.env.filters["words"] = schedule_words
        self.env.filters["short"] = short_id
        self.env.filters["when"] = _when
        self.env.filters["when_iso"] = lambda text: _when(_iso_ts(text))
        self.env.filters["json"] = lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2).decode()
        self.csrf = Csrf()

    def render(
        self, request: Request, name: str, http_status: int = 200, **context: Any
    ) -> Response:
        token = request.cookies.get(CSRF_COOKIE, "")
        fresh = not self.csrf.valid(token)
        if fresh:
            token = self.csrf.new()
        backend: Backend = request.app.state.backend
        html = self.env.get_template(name).render(
            request=request, csrf=token, path=request.url.path, token_file=backend.token_file,
            **context,
        )  # fmt: skip
        response = HTMLResponse(
            html, status_code=http_status, headers={"Cache-Control": "no-store"}
        )
        if fresh:
            response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict")
        return response


def _pages(request: Request) -> Pages:
    pages: Pages = request.app.state.pages
    return pages


def _backend(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


def _per_minute(runs: list[RunRecord], now: float) -> tuple[list[float], list[float]]:
    """Finished attempts and failures per minute over the last hour, oldest minute first."""
    done, failed = [0.0] * 60, [0.0] * 60
    for run in runs:
        if run.finished_at is None:
            continue
        age = int((now - run.finished_at) // 60)
        if 0 <= age < 60:
            done[59 - age] += 1
            if run.status not in ("succeeded", "queued", "running"):
                failed[59 - age] += 1
    return done, failed


def overview(request: Request) -> Response:
    backend = _backend(request)
    healthy, body = evaluate(backend)
    status = backend.cached("status")
    now = time.time()
    recent = backend.read(lambda s: s.find_runs(since=now - 3600, limit=20000))
    done, failed = _per_minute(recent, now)
    return _pages(request).render(
        request, "overview.html", healthy=healthy, health=body, status=status,
        series=bars(done, marks=failed), done=int(sum(done)), failed=int(sum(failed)),
        latest=recent[:10],
    )  # fmt: skip


def actors(request: Request) -> Response:
    backend = _backend(request)
    status = backend.cached("status")
    last = backend.read(lambda s: s.last_runs())  # one query for every actor
    return _pages(request).render(request, "actors.html", actors=status["actors"], last=last)


def actor(request: Request) -> Response:
    backend = _backend(request)
    name = request.path_params["name"]
    entry = api.known_actor(backend, name)
    runs = backend.read(lambda s: s.find_runs(actor=name, limit=50))
    versions = backend.read(lambda s: s.code_history(name, limit=50))
    durations = [(r.duration_ms or 0.0) / 1000 for r in reversed(runs) if r.finished_at]
    diff = None
    a, b = request.query_params.get("a"), request.query_params.get("b")
    if a and b:
        tags = {v.version_tag: v for v in versions}
        if a in tags and b in tags:
            diff = list(difflib.unified_diff(
                tags[a].script_code.splitlines(), tags[b].script_code.splitlines(),
                fromfile=a, tofile=b, lineterm="",
            ))  # fmt: skip
    return _pages(request).render(
        request, "actor.html", actor=entry, runs=runs, versions=versions,
        series=bars(durations, height=60), diff=diff, a=a, b=b,
    )  # fmt: skip


def run(request: Request) -> Response:
    backend = _backend(request)
    run_id = api.resolve_run_id(backend, request.path_params["run_id"])
    doc = backend.read(lambda s: run_document(s, run_id))
    if doc is None:
        raise Problem(404, "unknown_run", f"no run {run_id} recorded")
    views = doc["attempts"]
    return _pages(request).render(request, "run.html", run_id=run_id, attempts=views,
                                  last=views[-1], events=doc["events"], doc=doc)  # fmt: skip


def events(request: Request) -> Response:
    backend = _backend(request)
    limit = api.int_param(request, "limit", 200, 1, 1000)
    found, cursor = api.events_page(backend, api.event_filters(request, backend), limit)
    older = None
    if cursor is not None:  # the same filters, one page further back
        kept = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
        older = "/events?" + urlencode([*kept, ("cursor", cursor)])
    return _pages(request).render(
        request, "events.html", events=found, q=request.query_params, older=older
    )


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Problem(413, "body_too_large", "the form is too large")
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise Problem(400, "bad_request", "not a form") from None
    return {k: v[0] for k, v in fields.items()}


def _back(form: dict[str, str], default: str) -> str:
    target = form.get("next", "")
    return (
        target if re.match(r"^/[A-Za-z0-9/_.\-?=&%]*$", target) and "//" not in target else default
    )


async def act(request: Request) -> Response:
    """A dashboard button: pause, resume, trigger or roll back an actor."""
    backend = _backend(request)
    form = await _form(request)
    _pages(request).csrf.check(request, form.get("csrf", ""))
    require_token(backend, request, cookie=True)
    name, action = request.path_params["name"], request.path_params["action"]
    api.known_actor(backend, name)
    if action == "pause":
        reason = form.get("reason", "").strip()[:1000] or "paused from the dashboard"
        await run_in_threadpool(lambda: backend.call(lambda c: c.pause(name, reason)))
    elif action == "resume":
        await run_in_threadpool(lambda: backend.call(lambda c: c.resume(name)))
    elif action == "trigger":
        await run_in_threadpool(lambda: backend.call(lambda c: c.trigger(name, None, force=True)))
    elif action == "rollback":
        target = api.rollback_target(
            {
                "to_version": form.get("to_version") or None,
                "reason": form.get("reason", "").strip()[:1000] or None,
            }
        )
        await run_in_threadpool(lambda: api.do_rollback(backend, name, target, "dashboard"))
    else:
        raise Problem(404, "not_found", "no such action")
    backend.invalidate()  # the next page shows the change
    return RedirectResponse(_back(form, "/actors"), status_code=303)


async def run_act(request: Request) -> Response:
    """A run page's button: rerun it (then show the new run) or cancel it."""
    backend = _backend(request)
    form = await _form(request)
    _pages(request).csrf.check(request, form.get("csrf", ""))
    require_token(backend, request, cookie=True)
    action = request.path_params["action"]
    if action not in ("rerun", "cancel"):
        raise Problem(404, "not_found", "no such action")
    run_id = await run_in_threadpool(
        lambda: api.resolve_run_id(backend, request.path_params["run_id"])
    )
    target = run_id
    if action == "rerun":
        accepted = await run_in_threadpool(lambda: backend.call(lambda c: c.rerun(run_id)))
        assert isinstance(accepted, Accepted)  # without wait
        target = accepted.run_id
    else:
        await run_in_threadpool(
            lambda: backend.call(lambda c: c.cancel(run_id, timeout_s=api.CANCEL_WAIT_S))
        )
    backend.invalidate()
    return RedirectResponse(f"/runs/{target}", status_code=303)


def login_page(request: Request) -> Response:
    target = _back({"next": request.query_params.get("next", "")}, "/")
    return _pages(request).render(request, "login.html", failed=False, next=target)


def login_required(request: Request) -> Response:
    """A page asked for without a session: 401, with the sign-in form that leads back to it."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return _pages(request).render(
        request, "login.html", http_status=401, failed=False, next=_back({"next": target}, "/")
    )


async def login(request: Request) -> Response:
    backend = _backend(request)
    form = await _form(request)
    _pages(request).csrf.check(request, form.get("csrf", ""))
    target = _back(form, "/")
    if not given_token_ok(backend, form.get("token", "").strip()):
        return _pages(request).render(
            request, "login.html", http_status=401, failed=True, next=target
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(SESSION_COOKIE, session_value(backend.token), httponly=True,
                        samesite="strict")  # fmt: skip
    return response


def error_page(request: Request, exc: Problem) -> Response:
    try:
        return _pages(request).render(request, "error.html", http_status=exc.status, problem=exc)
    except Exception:  # never let the error page fail: plain text instead
        return Response(f"{exc.status} {exc.code}: {exc.detail}", status_code=exc.status)


def routes() -> list[BaseRoute]:
    return [
        Route("/", overview),
        Route("/actors", actors),
        Route("/actors/{name}", actor),
        Route("/runs/{run_id}", run),
        Route("/events", events),
        Route("/ui/actors/{name}/{action}", act, methods=["POST"]),
        Route("/ui/runs/{run_id}/{action}", run_act, methods=["POST"]),
        Route("/login", login_page),
        Route("/login", login, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]


def setup(app: Starlette) -> None:
    app.state.pages = Pages()
