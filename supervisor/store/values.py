"""Value rules every backend applies, so that a record reads back the same from any of them.

PostgreSQL cannot store a NUL character, neither in ``text`` nor inside a ``jsonb`` string,
while SQLite can. A script that writes a NUL to stderr must not wedge the batch writer on one
backend and pass on the other, so both replace NUL with U+FFFD (the replacement character)
before writing: the one deliberate lossy step, in one place.
"""

from collections.abc import Sequence
from typing import Any

import orjson

from supervisor.alerts.records import AlertRecord
from supervisor.code.records import CodeChange, SyncUpdate
from supervisor.records import ActorRecord, Event, Record, RunRecord, TaskState
from supervisor.store.base import StoreError
from supervisor.workflows.records import (
    WorkflowItemRecord,
    WorkflowRecord,
    WorkflowRunRecord,
    WorkflowSnapshot,
)

NUL = "\x00"
REPLACEMENT = "\ufffd"
_ESCAPED_NUL = b"\\u0000"  # how orjson writes a NUL inside a JSON string


def clean_text(value: Any) -> Any:
    """``value`` with every NUL replaced; non-strings (None, numbers) pass unchanged."""
    if isinstance(value, str) and NUL in value:
        return value.replace(NUL, REPLACEMENT)
    return value


def event_texts(event: Event) -> tuple[str | None, ...]:
    """The event's five text columns, in table order, with NULs replaced.

    On the writer's hot path: one ``join`` looks for NUL in all five at once.
    """
    texts = (
        event.event_id,
        event.event_type,
        event.aggregate_type,
        event.aggregate_id,
        event.correlation_id,
    )
    if NUL in "".join(texts[:4]) + (texts[4] or ""):
        return tuple(map(clean_text, texts))
    return texts


def json_bytes(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON with NULs in strings and keys replaced.

    The common case costs one ``orjson.dumps`` and one ``bytes`` search; only a document that
    really holds a NUL is walked. :raises TypeError: not JSON-serializable (orjson's error).
    """
    data = orjson.dumps(value)
    if _ESCAPED_NUL in data:
        data = orjson.dumps(_without_nul(value))
    return data


def json_text(value: Any) -> str:
    """:func:`json_bytes` as ``str``."""
    return json_bytes(value).decode()


def opt_json_text(value: Any) -> str | None:
    return None if value is None else json_text(value)


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(v) for v in value]
    return value


class SplitBatch:
    """A batch split by table and coalesced by key (the last version wins), in first-seen order.

    Events keep every entry in order, duplicates included: the store skips an ``event_id``
    already present, so the first of two duplicates is the one kept, as in a replay. Code
    changes and sync updates keep their order too (``code``): each one depends on the last, and
    so do alert outbox rows (``alerts``: a folded repeat updates the row before it).
    Scheduled fires' first attempts (``fires``) are apart from the other ``runs``: the store
    claims each with ``INSERT ... ON CONFLICT DO NOTHING``, so a fire already claimed by another
    supervisor is refused without failing the batch.
    """

    __slots__ = ("actors", "alerts", "code", "events", "fires", "runs", "states", "workflows")

    def __init__(self, records: Sequence[Record]) -> None:
        runs: dict[tuple[str, int], RunRecord] = {}
        states: dict[str, TaskState] = {}
        actors: dict[str, ActorRecord] = {}
        events: list[Event] = []
        code: list[CodeChange | SyncUpdate] = []
        alerts: list[AlertRecord] = []
        workflows: list[WorkflowRecord] = []
        for record in records:
            if isinstance(record, Event):
                events.append(record)
            elif isinstance(record, RunRecord):
                runs[record.key] = record
            elif isinstance(record, TaskState):
                states[record.actor] = record
            elif isinstance(record, ActorRecord):
                actors[record.name] = record
            elif isinstance(record, CodeChange | SyncUpdate):
                code.append(record)
            elif isinstance(record, AlertRecord):
                alerts.append(record)
            elif isinstance(record, WorkflowRunRecord | WorkflowItemRecord | WorkflowSnapshot):
                workflows.append(record)  # in order: a run's rows are upserted in turn
            else:
                raise StoreError(f"cannot store a {type(record).__name__}: not a Record")
        self.runs = [run for run in runs.values() if not run.is_fire]
        self.fires = [run for run in runs.values() if run.is_fire]
        self.states = list(states.values())
        self.actors = list(actors.values())
        self.events = events
        self.code = code
        self.alerts = alerts
        self.workflows = workflows
