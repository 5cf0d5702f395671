"""Code history on any backend: the SQL and the one transactional rule, written once.

A backend hands these functions a :class:`CodeDb` -- its open transaction, its timestamp
conversion, its per-actor lock and its event insert -- and gets the same behaviour on SQLite
and PostgreSQL. The rule for a new version: take the actor's lock; skip a change already
recorded (a replayed batch); compute the version tag inside the lock; deactivate the active row;
insert the new active row; update the actor's code columns; append the code event. All in the
caller's transaction, so two racing deploys leave exactly one active version and distinct tags.
"""

import abc
import time
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import orjson

from supervisor import events
from supervisor.code.records import (
    AUTO_SYNC,
    FILE_MISSING,
    ROLLBACK,
    SYNCED,
    CodeChange,
    CodeRecorded,
    CodeState,
    CodeVersion,
    SyncUpdate,
)
from supervisor.code.sync import check_version, next_version, status_of
from supervisor.records import Event
from supervisor.store.base import VersionExists
from supervisor.store.values import clean_text

EVENT_OF_CHANGE = {
    AUTO_SYNC: "code_auto_synced",
    ROLLBACK: "code_rolled_back",
}  # initial and manual_deploy: code_deployed

_COLUMNS = [f.name for f in fields(CodeVersion)]
_TIMES = ("changed_at", "source_file_mtime", "activated_at", "deactivated_at")
_JSON = "bundle_files"  # a JSON object in a text column
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM actor_code_history"
_INSERT = (
    f"INSERT INTO actor_code_history ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_COLUMNS))})"
)
_NEWEST_FIRST = " ORDER BY activated_at DESC, history_id DESC"
_DEACTIVATE = (
    "UPDATE actor_code_history SET deactivated_at = ? WHERE actor_id = ? AND deactivated_at IS NULL"
)
# Code columns of `actors`, inserting the row if the supervisor has not written it yet. A NULL
# file column keeps the stored value (a rollback does not touch the file).
_SET_CODE = """
INSERT INTO actors (name, script_path, code_sha256, created_at, updated_at, script_code,
    script_code_hash, active_history_id, script_sync_status, script_synced_at, script_file_path,
    script_file_hash, script_file_mtime)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET
    script_code = excluded.script_code,
    script_code_hash = excluded.script_code_hash,
    active_history_id = excluded.active_history_id,
    script_sync_status = excluded.script_sync_status,
    script_synced_at = COALESCE(excluded.script_synced_at, actors.script_synced_at),
    script_file_path = COALESCE(excluded.script_file_path, actors.script_file_path),
    script_file_hash = COALESCE(excluded.script_file_hash, actors.script_file_hash),
    script_file_mtime = COALESCE(excluded.script_file_mtime, actors.script_file_mtime)
"""
_SET_SYNC = """
INSERT INTO actors (name, script_path, code_sha256, created_at, updated_at, script_sync_status,
    script_synced_at, script_file_path, script_file_hash, script_file_mtime)
VALUES (?, ?, '', ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET
    script_sync_status = excluded.script_sync_status,
    script_synced_at = excluded.script_synced_at,
    script_file_path = excluded.script_file_path,
    script_file_hash = COALESCE(excluded.script_file_hash, actors.script_file_hash),
    script_file_mtime = COALESCE(excluded.script_file_mtime, actors.script_file_mtime)
"""
_STATE = """
SELECT a.name, a.exec_mode, a.script_code, a.script_code_hash, a.active_history_id,
    h.version_tag, a.script_file_path, a.script_file_hash, a.script_file_mtime,
    a.script_synced_at, a.script_sync_status, h.bundle_files
FROM actors a LEFT JOIN actor_code_history h ON h.history_id = a.active_history_id
"""


class CodeDb(abc.ABC):
    """One open transaction of a backend. SQL is written with ``?`` placeholders."""

    @abc.abstractmethod
    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query and return its rows."""

    @abc.abstractmethod
    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run a statement."""

    @abc.abstractmethod
    def to_db(self, ts: float | None) -> Any:
        """Epoch seconds as the backend stores timestamps."""

    @abc.abstractmethod
    def from_db(self, value: Any) -> float | None:
        """A stored timestamp as epoch seconds."""

    @abc.abstractmethod
    def lock_actor(self, actor: str) -> None:
        """Serialize code changes of ``actor`` until the transaction ends."""

    @abc.abstractmethod
    def add_events(self, found: Sequence[Event]) -> None:
        """Append events (an ``event_id`` already stored is skipped)."""


# --- writes ----------------------------------------------------------------------------------


def record_version(db: CodeDb, change: CodeChange) -> CodeRecorded:
    """Apply ``change`` in ``db``'s transaction (see the module docstring).

    :raises VersionExists: ``change.version_tag`` is already a version of the actor.
    """
    db.lock_actor(change.actor)
    active = active_version(db, change.actor)
    if _find(db, "history_id = ?", change.history_id):
        return CodeRecorded(None, active, active)  # already recorded: a replayed batch
    now = _as_stored(db, time.time())
    if change.only_if_changed and active and active.script_code_hash == change.script_code_hash:
        if change.synced_file:
            _set_code(db, change.actor, active, change, SYNCED, now)
        return CodeRecorded(None, active, active)
    taken = {row[0] for row in db.rows(
        "SELECT version_tag FROM actor_code_history WHERE actor_id = ?", (change.actor,)
    )}  # fmt: skip
    tag = change.version_tag
    if tag is None:
        tag = next_version(active.version_tag if active else None, taken)
    else:
        check_version(tag)
        if tag in taken:
            raise VersionExists(f"{change.actor}: version {tag} already exists")
    version = CodeVersion(
        history_id=change.history_id,
        actor_id=change.actor,
        script_code=change.script_code,
        script_code_hash=change.script_code_hash,
        bundle_files=change.bundle_files or None,
        change_type=change.change_type,
        change_reason=clean_text(change.change_reason),
        changed_by=clean_text(change.changed_by),
        changed_at=_as_stored(db, change.changed_at),
        source_file_path=clean_text(change.source_file_path),
        source_file_mtime=_as_stored(db, change.source_file_mtime),
        version_tag=tag,
        git_commit_hash=change.git_commit_hash,
        activated_at=now,
    )
    db.run(_DEACTIVATE, (db.to_db(now), change.actor))
    db.run(_INSERT, _row(db, version))
    _set_code(db, change.actor, version, change, _status_after(db, change, version), now)
    db.add_events([version_event(version, active)])
    return CodeRecorded(version, version, active)


def _as_stored(db: CodeDb, ts: Any) -> Any:
    """``ts`` as it reads back (microseconds), so the returned version equals the stored one."""
    return db.from_db(db.to_db(ts))


def _status_after(db: CodeDb, change: CodeChange, version: CodeVersion) -> str:
    if change.synced_file:
        return SYNCED
    found = db.rows(
        "SELECT script_file_hash, script_sync_status FROM actors WHERE name = ?", (change.actor,)
    )
    file_hash, status = found[0] if found else (None, None)
    return (
        FILE_MISSING if status == FILE_MISSING else status_of(file_hash, version.script_code_hash)
    )


def _set_code(
    db: CodeDb, actor: str, version: CodeVersion, change: CodeChange, status: str, now: float
) -> None:
    synced = change.synced_file
    path = change.source_file_path if synced else None
    db.run(
        _SET_CODE,
        (
            actor, change.source_file_path or "", version.script_code_hash, db.to_db(now),
            db.to_db(now), version.script_code, version.script_code_hash, version.history_id,
            status, db.to_db(now) if synced else None, path,
            change.script_code_hash if synced else None,
            db.to_db(change.source_file_mtime) if synced else None,
        ),
    )  # fmt: skip


def update_sync(db: CodeDb, update: SyncUpdate) -> None:
    now = db.to_db(time.time())
    db.run(
        _SET_SYNC,
        (
            update.actor, update.file_path, now, now, update.status, db.to_db(update.synced_at),
            update.file_path, update.file_hash, db.to_db(update.file_mtime),
        ),
    )  # fmt: skip


def version_event(version: CodeVersion, previous: CodeVersion | None) -> Event:
    """``code_deployed``, ``code_auto_synced`` or ``code_rolled_back``, with the actor as
    aggregate: which version, its hash, who, why, and what it replaced."""
    return events.actor_event(
        EVENT_OF_CHANGE.get(version.change_type, "code_deployed"),
        version.actor_id,
        history_id=version.history_id,
        version=version.version_tag,
        code_sha256=version.script_code_hash,
        change_type=version.change_type,
        changed_by=version.changed_by,
        change_reason=version.change_reason,
        source_file_path=version.source_file_path,
        git_commit_hash=version.git_commit_hash,
        previous_history_id=previous.history_id if previous else None,
        previous_version=previous.version_tag if previous else None,
    )


# --- reads -----------------------------------------------------------------------------------


def active_version(db: CodeDb, actor: str) -> CodeVersion | None:
    return _find(db, "actor_id = ? AND deactivated_at IS NULL", actor)


def find_version(
    db: CodeDb, actor: str, *, history_id: str | None, version_tag: str | None
) -> CodeVersion | None:
    if history_id is not None:
        found = _find(db, "history_id = ?", history_id)
        return found if found is not None and found.actor_id == actor else None
    if version_tag is not None:
        return _find(db, "actor_id = ? AND version_tag = ?", actor, version_tag)
    return active_version(db, actor)


def history(db: CodeDb, actor: str, limit: int | None) -> list[CodeVersion]:
    sql = f"{_SELECT} WHERE actor_id = ?{_NEWEST_FIRST}"
    params: list[Any] = [actor]
    if limit is not None:
        sql += " LIMIT ?"
        params.append(max(0, limit))
    return [_version(db, row) for row in db.rows(sql, params)]


def code_states(db: CodeDb, actors: Sequence[str] | None) -> dict[str, CodeState]:
    sql, params = _STATE, list(actors or ())
    if actors is not None:
        if not actors:
            return {}
        sql += f" WHERE a.name IN ({', '.join('?' * len(actors))})"
    states = {}
    for row in db.rows(sql, params):
        states[row[0]] = CodeState(
            actor=row[0], exec_mode=row[1], script_code=row[2], script_code_hash=row[3],
            active_history_id=row[4], active_version=row[5], script_file_path=row[6],
            script_file_hash=row[7], script_file_mtime=db.from_db(row[8]),
            script_synced_at=db.from_db(row[9]), script_sync_status=row[10],
            bundle_files=_files(row[11]),
        )  # fmt: skip
    return states


def _find(db: CodeDb, where: str, *params: Any) -> CodeVersion | None:
    found = db.rows(f"{_SELECT} WHERE {where}{_NEWEST_FIRST} LIMIT 1", params)
    return _version(db, found[0]) if found else None


def _row(db: CodeDb, version: CodeVersion) -> list[Any]:
    row = []
    for column in _COLUMNS:
        value = getattr(version, column)
        if column in _TIMES:
            value = db.to_db(value)
        elif column == _JSON and value is not None:
            value = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        row.append(value)
    return row


def _version(db: CodeDb, row: Sequence[Any]) -> CodeVersion:
    values = dict(zip(_COLUMNS, row, strict=True))
    for column in _TIMES:
        values[column] = db.from_db(values[column])
    values[_JSON] = _files(values[_JSON])
    return CodeVersion(**values)


def _files(text: str | None) -> dict[str, str] | None:
    """A stored ``bundle_files`` value; None for a version of the entry script alone."""
    if not text:
        return None
    files: dict[str, str] = orjson.loads(text)
    return files or None
