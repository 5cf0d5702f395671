"""The REST API under ``/api/v1/``: JSON in and out, problem+json errors with stable codes.

Reads of the schedule and the scoreboard ask the supervisor (``status``); reads of history ask
the store, read-only; mutations are control requests. Every parameter is checked here, before
anything is asked of anyone, so a malformed request costs nothing and cannot reach the
supervisor. Handlers are plain functions: Starlette runs them in its thread pool.
"""

import re
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from protocol.client import Accepted, Client, RunOutcome
from protocol.outcomes import RunStatus
from supervisor.code import rollback as code_rollback
from supervisor.errors import CommandRefused
from supervisor.http.auth import require_token
from supervisor.http.context import Backend
from supervisor.http.problems import Problem
from supervisor.http.views import (
    actor_json,
    decode_cursor,
    decode_event_cursor,
    encode_cursor,
    encode_event_cursor,
    event_json,
    run_json,
    version_json,
)
from supervisor.records import Event, RunRecord
from supervisor.runview import run_document
from supervisor.store.base import IdNotResolved

MAX_BODY_BYTES = 1 << 20
MAX_WAIT_S = 600.0
CANCEL_WAIT_S = 60.0  # a running run gets kill_grace_s after TERM; its result follows the KILL
ACTOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
STATUSES = tuple(s.value for s in RunStatus)  # queued, running, succeeded, ..., cancelled


def backend_of(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


# --- parameters ---------------------------------------------------------------------------------


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise Problem(400, "bad_parameter", f"{name}: expected an integer") from None
    if not low <= value <= high:
        raise Problem(400, "bad_parameter", f"{name}: must be from {low} to {high}")
    return value


def since_param(request: Request) -> float | None:
    text = request.query_params.get("since")
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except (ValueError, OverflowError):
            raise Problem(
                400, "bad_parameter", "since: expected ISO-8601 or epoch seconds"
            ) from None
    if not 0 <= value < 1e11:
        raise Problem(400, "bad_parameter", "since: out of range")
    return value


def actor_param(text: str | None, name: str = "actor") -> str | None:
    if text is None or text == "":
        return None
    if not ACTOR_NAME.match(text):
        raise Problem(400, "bad_parameter", f"{name}: not an actor name")
    return text


def known_actor(backend: Backend, name: str) -> dict[str, Any]:
    """The actor's ``status`` entry. :raises Problem: 404 ``unknown_actor``."""
    if not ACTOR_NAME.match(name):
        raise Problem(404, "unknown_actor", "no actor by that name")
    for actor in backend.cached("status", max_age_s=1.0)["actors"]:
        if actor["name"] == name:
            found: dict[str, Any] = actor
            return found
    raise Problem(404, "unknown_actor", f"no actor named {name!r}")


def resolve_id(backend: Backend, kind: str, text: str) -> str:
    """A full id of ``kind`` (``run``, ``history``, ``event``, ``workflow_run``) from itself or
    a unique prefix of at least 8 characters, resolved by the store as the CLI resolves it
    (``Store.resolve_id``).

    :raises Problem: 400 ``bad_parameter`` (malformed or too short), 404 ``unknown_run`` /
        ``unknown_version`` / ``unknown_event`` / ``unknown_workflow_run``, 409
        ``ambiguous_id`` naming the candidates.
    """
    try:
        return backend.read(lambda s: s.resolve_id(kind, text))
    except IdNotResolved as exc:
        raise id_problem(exc) from None


def id_problem(exc: IdNotResolved) -> Problem:
    if exc.code == "unknown_id":
        codes = {
            "run": "unknown_run",
            "history": "unknown_version",
            "workflow_run": "unknown_workflow_run",
        }
        code = codes.get(exc.kind, "unknown_event")
        return Problem(404, code, exc.message)
    if exc.code == "ambiguous_id":
        return Problem(409, "ambiguous_id", exc.message)
    return Problem(400, "bad_parameter", exc.message)


def resolve_run_id(backend: Backend, text: str) -> str:
    """A full run id, from itself or a unique prefix of at least 8 characters."""
    return resolve_id(backend, "run", text.lower())


async def read_json(request: Request, *, allow_empty: bool = True) -> Any:
    """The request body as JSON (None when empty); at most :data:`MAX_BODY_BYTES`."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        raise Problem(413, "body_too_large", f"the body may be at most {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise Problem(413, "body_too_large", f"the body may be at most {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        if allow_empty:
            return None
        raise Problem(400, "bad_json", "a JSON body is required")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, "bad_json", f"the body is not valid JSON: {exc}") from None


# --- actors ---------------------------------------------------------------------------------


def last_run_json(record: RunRecord | None) -> dict[str, Any] | None:
    """The short form of an actor's last run, for lists."""
    if record is None:
        return None
    return {"run_id": record.run_id, "attempt": record.attempt, "status": record.status,
            "reason": record.reason, "queued_at": record.queued_at,
            "finished_at": record.finished_at}  # fmt: skip


def list_actors(request: Request) -> JSONResponse:
    backend = backend_of(request)
    status = backend.cached("status", max_age_s=0.5)
    last = backend.read(lambda s: s.last_runs())  # one query for every actor
    actors = [
        {**actor_json(a), "last_run": last_run_json(last.get(a["name"]))} for a in status["actors"]
    ]
    return JSONResponse({"actors": actors})


def get_actor(request: Request) -> JSONResponse:
    backend = backend_of(request)
    name = request.path_params["name"]
    data = actor_json(known_actor(backend, name))
    last = backend.read(lambda s: s.find_runs(actor=name, limit=1))
    data["last_run"] = run_json(last[0]) if last else None
    active = backend.read(lambda s: s.code_version(name))
    data["active_version"] = version_json(active) if active else None
    return JSONResponse(data)


def actor_versions(request: Request) -> JSONResponse:
    backend = backend_of(request)
    name = request.path_params["name"]
    known_actor(backend, name)
    limit = int_param(request, "limit", 50, 1, 1000)
    versions = backend.read(lambda s: s.code_history(name, limit=limit))
    return JSONResponse({"versions": [version_json(v) for v in versions]})


def actor_code(request: Request) -> JSONResponse:
    backend = backend_of(request)
    name = request.path_params["name"]
    known_actor(backend, name)
    tag = request.query_params.get("version") or None
    if tag is not None and not re.match(r"^[0-9A-Za-z.+_-]{1,64}$", tag):
        raise Problem(400, "bad_parameter", "version: not a version tag")
    version = backend.read(lambda s: s.code_version(name, version_tag=tag))
    if version is None:
        raise Problem(404, "unknown_version", f"{name} has no version {tag or '(active)'}")
    return JSONResponse(version_json(version, code=True))


def wait_param(request: Request) -> float | None:
    """``?wait=S``: wait up to S seconds for the run's final outcome (None: do not wait)."""
    text = request.query_params.get("wait")
    if text is None:
        return None
    try:
        wait = float(text)
    except ValueError:
        raise Problem(400, "bad_parameter", "wait: expected seconds") from None
    if not 0 < wait <= MAX_WAIT_S:
        raise Problem(400, "bad_parameter", f"wait: must be > 0 and <= {MAX_WAIT_S:.0f}")
    return wait


async def submit_run(request: Request) -> Response:
    backend = backend_of(request)
    require_token(backend, request)
    wait = wait_param(request)
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= 200:
        raise Problem(400, "bad_parameter", "Idempotency-Key: 1 to 200 characters")
    body = await read_json(request)
    name = request.path_params["name"]
    if not ACTOR_NAME.match(name):
        raise Problem(404, "unknown_actor", "no actor by that name")

    answer = await _queue_run(
        backend,
        lambda c: c.submit(name, body, wait=wait is not None, timeout_s=wait, idempotency_key=key),
        wait,
    )
    if isinstance(answer, Accepted):
        return _accepted(answer, deduplicated=answer.deduplicated)
    return JSONResponse(answer.as_dict())


async def _queue_run(
    backend: Backend, ask: Callable[[Client], Accepted | RunOutcome], wait: float | None
) -> Accepted | RunOutcome:
    """A submit or a rerun, off the event loop; with ``?wait=``, a supervisor that does not
    answer in time is a 504 ``wait_timeout`` (the run may well be queued)."""
    try:
        answer: Accepted | RunOutcome = await run_in_threadpool(lambda: backend.call(ask))
    except Problem as exc:
        if exc.code == "supervisor_unreachable" and wait is not None:
            raise Problem(504, "wait_timeout", f"no final outcome within {wait}s") from None
        raise
    return answer


def _accepted(answer: Accepted, **extra: Any) -> JSONResponse:
    """202 with the run's id and where to find it."""
    return JSONResponse(
        {"run_id": answer.run_id, "actor": answer.actor, **extra},
        status_code=202,
        headers={"Location": f"/api/v1/runs/{answer.run_id}"},
    )


async def trigger_actor(request: Request) -> JSONResponse:
    backend = backend_of(request)
    require_token(backend, request)
    body = await read_json(request)
    name = request.path_params["name"]
    if not ACTOR_NAME.match(name):
        raise Problem(404, "unknown_actor", "no actor by that name")
    force = request.query_params.get("force", "false").lower() in ("1", "true", "yes")
    accepted = await run_in_threadpool(
        lambda: backend.call(lambda c: c.trigger(name, body, force=force))
    )
    return JSONResponse({"run_id": accepted.run_id, "actor": accepted.actor}, status_code=202)


async def pause_actor(request: Request) -> JSONResponse:
    backend = backend_of(request)
    require_token(backend, request)
    body = await read_json(request)
    reason = None
    if body is not None:
        if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str | None):
            raise Problem(400, "bad_json", 'expected {"reason": "..."}')
        reason = body.get("reason")
        if reason is not None and len(reason) > 1000:
            raise Problem(400, "bad_parameter", "reason: at most 1000 characters")
    name = request.path_params["name"]
    if not ACTOR_NAME.match(name):
        raise Problem(404, "unknown_actor", "no actor by that name")
    data = await run_in_threadpool(lambda: backend.call(lambda c: c.pause(name, reason)))
    backend.invalidate()
    return JSONResponse(data)


async def resume_actor(request: Request) -> JSONResponse:
    backend = backend_of(request)
    require_token(backend, request)
    await read_json(request)  # a body is ignored, but still bounded
    name = request.path_params["name"]
    if not ACTOR_NAME.match(name):
        raise Problem(404, "unknown_actor", "no actor by that name")
    data = await run_in_threadpool(lambda: backend.call(lambda c: c.resume(name)))
    backend.invalidate()
    return JSONResponse(data)


VERSION_TAG = re.compile(r"^[0-9A-Za-z.+_-]{1,64}$")
HISTORY_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


def rollback_target(body: Any) -> tuple[str | None, str | None, str | None]:
    """``(to_version, to_history, reason)`` from ``{"to_version": ...}`` or
    ``{"to_history": ...}`` (exactly one), with an optional ``reason``."""
    if not isinstance(body, dict):
        raise Problem(400, "bad_json", 'expected {"to_version": "x.y.z"} or {"to_history": id}')
    version, history, reason = body.get("to_version"), body.get("to_history"), body.get("reason")
    if (version is None) == (history is None):
        raise Problem(400, "bad_parameter", "give exactly one of to_version and to_history")
    if version is not None and not (isinstance(version, str) and VERSION_TAG.match(version)):
        raise Problem(400, "bad_parameter", "to_version: not a version tag")
    if history is not None and not (isinstance(history, str) and HISTORY_ID.match(history)):
        raise Problem(400, "bad_parameter", "to_history: not a history id")
    if reason is not None and not (isinstance(reason, str) and len(reason) <= 1000):
        raise Problem(400, "bad_parameter", "reason: a string of at most 1000 characters")
    return version, history, reason or None


def do_rollback(
    backend: Backend, name: str, target: tuple[str | None, str | None, str | None], by: str
) -> dict[str, Any]:
    """Roll ``name`` back as ``actor-supervisor rollback`` does
    (:func:`~supervisor.code.rollback.rollback`), then have the supervisor use the version now
    (``refresh``). Runs in a worker thread.

    :raises Problem: 404 ``unknown_actor`` or ``unknown_version``; 409 ``file_mode`` for an
        actor that runs its file (the CLI's ``--write-file`` is not offered over HTTP).
    """
    exec_mode = known_actor(backend, name)["exec_mode"]
    version, history, reason = target
    try:
        found, recorded = backend.write(
            lambda s: code_rollback.rollback(
                s, name, exec_mode, None, to_version=version, to_history=history,
                reason=reason, by=by,
            )
        )  # fmt: skip
    except IdNotResolved as exc:
        raise id_problem(exc) from None
    except CommandRefused as exc:
        if exc.code == "not_found":
            which = version or history
            raise Problem(404, "unknown_version", f"{name} has no version {which}") from None
        if exc.code == "file_mode":
            raise Problem(
                409, "file_mode",
                f"{name} runs its script file (exec_mode = file): making an earlier version "
                "active would not change what runs. Roll back on the command line with "
                f"`actor-supervisor rollback {name} --to-version X.Y.Z --write-file`, which "
                "also writes the code back to the file.",
            ) from None  # fmt: skip
        raise Problem(409, exc.code, str(exc)) from None
    result = code_rollback.rollback_dict(name, found, recorded, file_written=False)
    result["refreshed"] = False
    if recorded.version is not None:
        try:
            answer = backend.call(lambda c: c.refresh(name))
            result["refreshed"] = True
            result["supervisor"] = f"the supervisor uses it now (status {answer.get('status')})"
        except Problem as exc:  # committed all the same: the next start uses it
            result["supervisor"] = f"the supervisor did not confirm ({exc.detail})"
    backend.invalidate()
    return result


async def rollback_actor(request: Request) -> JSONResponse:
    backend = backend_of(request)
    require_token(backend, request)
    target = rollback_target(await read_json(request, allow_empty=False))
    name = request.path_params["name"]
    if not ACTOR_NAME.match(name):
        raise Problem(404, "unknown_actor", "no actor by that name")
    result = await run_in_threadpool(lambda: do_rollback(backend, name, target, "http api"))
    return JSONResponse(result)


# --- runs and events ------------------------------------------------------------------------


def list_runs(request: Request) -> JSONResponse:
    backend = backend_of(request)
    actor = actor_param(request.query_params.get("actor"))
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        raise Problem(400, "bad_parameter", f"status: one of {', '.join(STATUSES)}")
    since = since_param(request)
    limit = int_param(request, "limit", 50, 1, 500)
    cursor_text = request.query_params.get("cursor")
    before = decode_cursor(cursor_text) if cursor_text else None
    runs = backend.read(
        lambda s: s.find_runs(
            actor=actor, status=status, since=since, before=before, limit=limit + 1,
            latest_only=True,
        )
    )  # fmt: skip
    page, more = runs[:limit], len(runs) > limit
    return JSONResponse(
        {
            "runs": [{**run_json(r), "attempts": r.attempt} for r in page],
            "next_cursor": encode_cursor(page[-1]) if more and page else None,
        }
    )


def get_run(request: Request) -> JSONResponse:
    """The document ``actor-supervisor show --json`` prints (:func:`run_document`)."""
    backend = backend_of(request)
    run_id = resolve_run_id(backend, request.path_params["run_id"])
    document = backend.read(lambda s: run_document(s, run_id))
    if document is None:  # resolved a moment ago: only a pruned run can vanish in between
        raise Problem(404, "unknown_run", f"no run {run_id} recorded")
    return JSONResponse(document)


async def rerun_run(request: Request) -> Response:
    """A new run of the run's actor with its input, linked to it; ``?wait=S`` as for submit."""
    backend = backend_of(request)
    require_token(backend, request)
    wait = wait_param(request)
    await read_json(request)  # a body is ignored, but still bounded
    run_id = await run_in_threadpool(lambda: resolve_run_id(backend, request.path_params["run_id"]))

    answer = await _queue_run(
        backend, lambda c: c.rerun(run_id, wait=wait is not None, timeout_s=wait), wait
    )
    backend.invalidate()
    if isinstance(answer, Accepted):
        return _accepted(answer, rerun_of=run_id)
    return JSONResponse({**answer.as_dict(), "rerun_of": run_id})


async def cancel_run(request: Request) -> JSONResponse:
    """Cancel a queued or running run; answered with its one outcome once it is recorded.
    A finished run is a 409 ``not_cancellable`` naming how it ended."""
    backend = backend_of(request)
    require_token(backend, request)
    await read_json(request)
    run_id = await run_in_threadpool(lambda: resolve_run_id(backend, request.path_params["run_id"]))

    def call() -> RunOutcome:
        return backend.call(lambda c: c.cancel(run_id, timeout_s=CANCEL_WAIT_S))

    try:
        outcome = await run_in_threadpool(call)
    except Problem as exc:
        if exc.code == "not_cancellable":
            last = await run_in_threadpool(
                lambda: backend.read(lambda s: s.list_runs(run_id=run_id, limit=1))
            )
            how = f" (it ended {last[0].status})" if last and last[0].is_final else ""
            raise Problem(409, "not_cancellable", f"{exc.detail}{how}") from None
        if exc.code == "supervisor_unreachable":
            raise Problem(
                504, "wait_timeout", f"run {run_id} has not ended within {CANCEL_WAIT_S:.0f}s"
            ) from None
        raise
    backend.invalidate()
    return JSONResponse(outcome.as_dict())


def event_filters(request: Request, backend: Backend) -> dict[str, Any]:
    """The ``run``, ``actor``, ``correlation``, ``since`` and ``cursor`` parameters, checked,
    as :meth:`Store.find_events` arguments (shared with the events page)."""
    filters: dict[str, Any] = {"since": since_param(request)}
    run = request.query_params.get("run")
    actor = actor_param(request.query_params.get("actor"))
    correlation = request.query_params.get("correlation") or None
    if run:
        filters.update(aggregate_type="run", aggregate_id=resolve_run_id(backend, run))
    elif actor:
        filters.update(aggregate_type="actor", aggregate_id=actor)
    if correlation is not None:
        if len(correlation) > 64:
            raise Problem(400, "bad_parameter", "correlation: at most 64 characters")
        filters["correlation_id"] = correlation
    if cursor := request.query_params.get("cursor"):
        filters["before"] = decode_event_cursor(cursor)
    return filters


def events_page(
    backend: Backend, filters: dict[str, Any], limit: int
) -> tuple[list[Event], str | None]:
    """One page of events, newest first, and the cursor of the next (None: the last page)."""
    found = backend.read(lambda s: s.find_events(**filters, limit=limit + 1))
    page = found[:limit]
    return page, encode_event_cursor(page[-1]) if len(found) > limit and page else None


def list_events(request: Request) -> JSONResponse:
    backend = backend_of(request)
    limit = int_param(request, "limit", 200, 1, 1000)
    page, cursor = events_page(backend, event_filters(request, backend), limit)
    return JSONResponse({"events": [event_json(e) for e in page], "next_cursor": cursor})


# --- alerts ------------------------------------------------------------------------------------

ALERT_STATUSES = ("pending", "delivered", "failed")
DESTINATION = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")  # an [[alerts]] entry's name


def list_alerts(request: Request) -> JSONResponse:
    """The alert outbox, newest first, as ``actor-supervisor alerts --json`` reads it."""
    backend = backend_of(request)
    status = request.query_params.get("status") or None
    if status is not None and status not in ALERT_STATUSES:
        raise Problem(400, "bad_parameter", f"status: one of {', '.join(ALERT_STATUSES)}")
    destination = request.query_params.get("destination") or None
    if destination is not None and not DESTINATION.match(destination):
        raise Problem(400, "bad_parameter", "destination: an [[alerts]] entry's name")
    limit = int_param(request, "limit", 50, 1, 500)
    found = backend.read(
        lambda s: s.list_alerts(status=status, destination=destination, limit=limit)
    )
    return JSONResponse({"alerts": [asdict(a) for a in found]})
