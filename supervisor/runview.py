"""One run as ``actor-supervisor show`` and ``GET /api/v1/runs/{id}`` present it: every attempt,
the input, the final output and stderr tail, the run's events and its rerun links -- one
document, built here for both, so the CLI's ``--json`` and the API cannot drift apart."""

from dataclasses import asdict
from typing import Any

import orjson

from supervisor.records import Event, RunRecord
from supervisor.store.base import Store

MAX_ATTEMPTS = 1000  # far above any max_retries a configuration accepts
MAX_EVENTS = 10_000


def attempt_json(record: RunRecord) -> dict[str, Any]:
    """An attempt's row with its input and output as JSON values (text that is not JSON, which
    only a hand-edited row holds, stays text)."""
    data = asdict(record)
    data["input"] = _loads(record.input_json)
    data["output"] = _loads(record.output_json)
    del data["input_json"], data["output_json"]
    return data


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def event_json(event: Event) -> dict[str, Any]:
    return asdict(event)


def _version_tags(store: Store, actor: str, history_ids: set[str | None]) -> dict[str | None, str]:
    """The version tag (``1.0.3``) of each code version the attempts ran: one lookup each."""
    tags: dict[str | None, str] = {}
    for history_id in history_ids:
        version = history_id and store.code_version(actor, history_id=history_id)
        if version:
            tags[history_id] = version.version_tag
    return tags


def run_document(store: Store, run_id: str) -> dict[str, Any] | None:
    """The whole story of ``run_id`` (a full id), or None when no attempt of it is recorded.

    The top level repeats the last attempt's outcome (``status``, ``reason``, ``error``,
    ``output``, ``stderr_tail``); ``rerun_of`` names the run this one repeats, ``reruns`` the
    runs that repeat it (both from the ``run_rerun`` / ``rerun_queued`` events). Each attempt
    adds ``code_version``: the version tag of the code it ran."""
    attempts = sorted(store.list_runs(run_id=run_id, limit=MAX_ATTEMPTS), key=lambda r: r.attempt)
    if not attempts:
        return None
    found = store.list_events(aggregate_type="run", aggregate_id=run_id, limit=MAX_EVENTS)
    first, last = attempts[0], attempts[-1]
    rerun_of = next(
        (e.metadata.get("rerun_of") for e in found if e.event_type == "run_rerun"), None
    )
    reruns = [e.metadata.get("rerun_run_id") for e in found if e.event_type == "rerun_queued"]
    tags = _version_tags(store, last.actor, {r.code_history_id for r in attempts})
    return {
        "run_id": run_id,
        "actor": last.actor,
        "status": last.status,
        "reason": last.reason,
        "error": last.error,
        "trigger": first.trigger,
        "input": _loads(first.input_json),
        "output": _loads(last.output_json),
        "stderr_tail": last.stderr_tail,
        "queued_at": first.queued_at,
        "finished_at": last.finished_at if last.is_final else None,
        "rerun_of": rerun_of,
        "reruns": reruns,
        "attempts": [
            {**attempt_json(r), "code_version": tags.get(r.code_history_id)} for r in attempts
        ],
        "events": [event_json(e) for e in found],
    }
