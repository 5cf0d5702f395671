"""Rolling an actor back to an earlier code version: shared by ``actor-supervisor rollback``
(:mod:`supervisor.cli.code`) and the HTTP API's rollback endpoint."""

import time
from pathlib import Path
from typing import Any

from supervisor import events
from supervisor.code.records import ROLLBACK, CodeChange, CodeRecorded, CodeVersion
from supervisor.code.sync import is_module_path, write_atomically
from supervisor.errors import CommandRefused
from supervisor.store.base import Store


def rollback(
    store: Store,
    actor: str,
    exec_mode: str,
    script: Path | None,
    *,
    write_file: bool = False,
    to_version: str | None,
    to_history: str | None,
    reason: str | None,
    by: str,
) -> tuple[CodeVersion, CodeRecorded]:
    """Make the version ``to_version`` (or ``to_history``) of ``actor`` active again, as a new
    ``rollback`` version; ``write_file``: also write its bundle back first (the entry to
    ``script``, its modules beside it). The
    CLI and the HTTP API both roll back through here; the caller then asks a running
    supervisor to ``refresh`` the actor.

    :raises CommandRefused: ``not_found`` (no such version), ``file_mode`` (the actor runs its
        file, so without ``write_file`` nothing would change); ``IdNotResolved`` for a
        ``to_history`` that is not one history id or a unique prefix of one.
    """
    if to_history is not None:  # a unique prefix will do, as for every id a command takes
        to_history = store.resolve_id("history", to_history)
    target = store.code_version(actor, history_id=to_history, version_tag=to_version)
    if target is None:
        raise CommandRefused("not_found", f"{actor}: no code version {to_version or to_history}")
    if exec_mode == "file" and not write_file:
        raise CommandRefused(
            "file_mode",
            f"{actor} runs its script file (exec_mode = file), so making version "
            f"{target.version_tag} active would not change what runs. Add --write-file to "
            f"also write its code back to {script or 'its file'}, or set exec_mode to "
            "'database' or 'auto'.",
        )
    if write_file and script is None:
        raise ValueError("write_file needs the script's path")
    written = script if write_file else None
    change = _rollback_change(actor, target, written, reason=reason, by=by)
    return target, store.record_code_version(change)


def rollback_dict(
    actor: str, target: CodeVersion, recorded: CodeRecorded, *, file_written: bool
) -> dict[str, Any]:
    """What a rollback did, as ``rollback --json`` prints it (without ``supervisor``)."""
    result = recorded_dict(actor, recorded)
    result["rolled_back_to"] = target.version_tag
    result["file_written"] = file_written
    return result


def recorded_dict(actor: str, recorded: CodeRecorded) -> dict[str, Any]:
    """A recorded (or skipped) version, as ``deploy --json`` prints it."""
    version, active, previous = recorded.version, recorded.active, recorded.previous
    shown = version or active
    return {
        "actor": actor,
        "recorded": version is not None,
        "skipped": None if version is not None else "unchanged",
        "version": shown.version_tag if shown else None,
        "history_id": shown.history_id if shown else None,
        "code_sha256": shown.script_code_hash if shown else None,
        "previous_version": previous.version_tag if previous and version else None,
    }


def write_bundle(script: Path, version: CodeVersion) -> None:
    """Write every file of ``version``'s bundle back: its entry to ``script``, the others
    beside it, each atomically, keeping an existing file's mode and owner (a recreated entry
    that starts with ``#!`` is a command actor's program: 0755, so it can still run). The
    modules first, so the entry never runs against helpers older than itself. Files the
    version does not have are left alone (its entry does not import them).

    :raises CommandRefused: ``bad_bundle``, a stored path that is not a plain module path.
    """
    others = version.bundle_files or {}
    for rel in others:
        if not is_module_path(rel):
            raise CommandRefused("bad_bundle", f"stored bundle file {rel!r} is not a module path")
    for rel, code in [*sorted(others.items()), ("", version.script_code)]:
        path = script.parent / rel if rel else script
        path.parent.mkdir(parents=True, exist_ok=True)
        before = path.stat() if path.exists() else None
        write_atomically(
            path,
            code.encode("utf-8"),
            mode=before.st_mode & 0o7777 if before else _new_mode(rel, code),
            owner=(before.st_uid, before.st_gid) if before else None,
        )


def _new_mode(rel: str, code: str) -> int:
    return 0o755 if not rel and code.startswith("#!") else 0o644


def _rollback_change(
    actor: str, target: CodeVersion, write_file: Path | None, *, reason: str | None, by: str
) -> CodeChange:
    """The rollback row; with ``write_file`` the file is written first (atomically), so a
    failure after it leaves a changed file that the next sync records, never a lie."""
    mtime = target.source_file_mtime
    if write_file is not None:
        write_bundle(write_file, target)
        mtime = write_file.stat().st_mtime
    why = f"rollback to {target.version_tag} (history {target.history_id})"
    return CodeChange(
        history_id=events.new_id(),
        actor=actor,
        script_code=target.script_code,
        script_code_hash=target.script_code_hash,
        bundle_files=target.bundle_files,
        change_type=ROLLBACK,
        change_reason=f"{why}: {reason}" if reason else why,
        changed_by=by,
        changed_at=time.time(),
        source_file_path=str(write_file) if write_file is not None else target.source_file_path,
        source_file_mtime=mtime,
        git_commit_hash=target.git_commit_hash,
        only_if_changed=True,
        synced_file=write_file is not None,
    )
