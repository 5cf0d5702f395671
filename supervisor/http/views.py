"""What the API and the dashboard show of records: their JSON views and the opaque page cursors.

A cursor is the sort key of the last row of a page, base64url-encoded; a cursor this API did not
give out is a 400 ``bad_parameter``, never an error of the store.
"""

import base64
import binascii
import re
from dataclasses import asdict
from typing import Any

import orjson

from supervisor.code.records import CodeVersion
from supervisor.http.problems import Problem
from supervisor.records import Event, RunRecord
from supervisor.runview import attempt_json
from supervisor.runview import event_json as event_json  # re-exported: the API's event view

run_json = attempt_json  # the API's name for one attempt, in lists


def version_json(version: CodeVersion, *, code: bool = False) -> dict[str, Any]:
    data = asdict(version)
    data["active"] = version.is_active
    if not code:
        del data["script_code"], data["bundle_files"]
    return data


def actor_json(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": entry["name"],
        "schedule": entry["schedule"],
        "next_fire": entry["next_due"],
        "next_fire_ts": entry["next_due_ts"],
        "paused": entry["paused"],
        "paused_reason": entry["paused_reason"],
        "consecutive_failures": entry["consecutive_failures"],
        "last_run_at": entry["last_run_at"],
        "active_runs": entry["active_runs"],
        "mode": entry["mode"],
        "exec_mode": entry["exec_mode"],
        "code_sha256": entry["code_sha256"],
        "code_history_id": entry["code_history_id"],
        "drift": entry["code_status"],
    }


def encode_cursor(record: RunRecord) -> str:
    raw = orjson.dumps([record.queued_at, record.attempt, record.run_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[float, int, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        at, attempt, run_id = orjson.loads(raw)
        if not (
            isinstance(at, int | float) and isinstance(attempt, int) and isinstance(run_id, str)
        ):
            raise ValueError
        if not (0 <= at < 1e11 and 0 < attempt < 1 << 31 and len(run_id) <= 64):
            raise ValueError
        return float(at), attempt, run_id
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise Problem(400, "bad_parameter", "cursor: not a cursor this API gave out") from None


EVENT_CURSOR = re.compile(r"^[0-9A-Za-z_.:-]{1,64}$")


def encode_event_cursor(event: Event) -> str:
    return base64.urlsafe_b64encode(event.event_id.encode()).decode().rstrip("=")


def decode_event_cursor(text: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raw = ""
    if not EVENT_CURSOR.match(raw):
        raise Problem(400, "bad_parameter", "cursor: not a cursor this API gave out")
    return raw
