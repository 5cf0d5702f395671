"""The code commands: ``drift``, ``deploy``, ``versions``, ``rollback``, ``show-code``.

They work straight on the store, with the supervisor stopped or running. After a deploy or
rollback commits, a running supervisor is told to re-read the actor's code (a ``refresh``
request on its control endpoint); when none is running that is fine: the next start uses the
active version. The configuration says where each actor's file is and how it runs.
"""

import argparse
import functools
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from protocol.client import ClientError, ClientTimeout
from supervisor import events
from supervisor.cli.common import (
    EXIT_OK,
    command,
    config_flag,
    control_flag,
    count,
    database_flag,
    endpoint_origin,
    load,
    open_store_from,
    table,
)
from supervisor.code.book import SUMMARY_KEYS, summary_line
from supervisor.code.records import (
    DRIFT_DETECTED,
    FILE_MISSING,
    MANUAL_DEPLOY,
    SYNCED,
    UNVERSIONED,
    CodeChange,
    CodeRecorded,
    CodeVersion,
)
from supervisor.code.rollback import recorded_dict, rollback, rollback_dict
from supervisor.code.sync import (
    CodeError,
    FileSnapshot,
    RunsAs,
    check_version,
    git_commit,
    os_user,
    read_snapshot,
)
from supervisor.config import ActorConfig, Config
from supervisor.controlkeys import client_for
from supervisor.errors import CommandRefused, ConfigError
from supervisor.preflight import runs_as
from supervisor.status import iso
from supervisor.store.base import Store, StoreError, VersionExists
from workers.access import AccessCheckError

REFRESH_TIMEOUT_S = 10.0


def add_code_commands(sub: Any) -> None:
    drift = command(sub, "drift", "compare script files with their active versions", cmd_drift)
    drift.add_argument("actors", nargs="*", metavar="ACTOR", help="default: every actor")
    _code_flags(drift)

    deploy = command(sub, "deploy", "record a script file as a new code version", cmd_deploy)
    deploy.add_argument("actor", nargs="?", metavar="ACTOR")
    deploy.add_argument("--all", action="store_true", help="every actor whose file changed")
    deploy.add_argument("--version", help="MAJOR.MINOR.PATCH (default: the previous patch + 1)")
    deploy.add_argument("--changelog", help="why: kept with the version")
    deploy.add_argument("--by", help="who deploys (default: the OS user)")
    _code_flags(deploy, control=True)

    versions = command(sub, "versions", "an actor's code history, newest first", cmd_versions)
    versions.add_argument("actor", metavar="ACTOR")
    versions.add_argument("--limit", type=count, help="at most this many versions")
    _code_flags(versions)

    rollback = command(sub, "rollback", "make an earlier code version active", cmd_rollback)
    rollback.add_argument("actor", metavar="ACTOR")
    target = rollback.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-version", help="the version tag to make active again")
    target.add_argument("--to-history", help="the history id to make active again")
    rollback.add_argument(
        "--write-file", action="store_true", help="also write that code back to the script file"
    )
    rollback.add_argument("--reason", help="why: kept with the rollback")
    rollback.add_argument("--by", help="who rolls back (default: the OS user)")
    _code_flags(rollback, control=True)

    show = command(sub, "show-code", "print the stored code of a version", cmd_show_code)
    show.add_argument("actor", metavar="ACTOR")
    which = show.add_mutually_exclusive_group()
    which.add_argument("--version", help="a version tag (default: the active version)")
    which.add_argument("--history", help="a history id")
    show.add_argument("--file", metavar="PATH", help="only this file of the bundle (relative)")
    _code_flags(show)


def _code_flags(parser: argparse.ArgumentParser, *, control: bool = False) -> None:
    config_flag(parser)
    database_flag(parser)
    if control:
        control_flag(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _actor(config: Config, name: str) -> ActorConfig:
    actor = config.actors.get(name)
    if actor is None:
        known = ", ".join(sorted(config.actors)) or "none"
        raise CommandRefused("unknown_actor", f"no actor named {name!r} (known: {known})")
    return actor


def _store(args: argparse.Namespace) -> tuple[Config, Store]:
    config = load(args, "database")
    return config, open_store_from(args, config)


def _with_schema_hint(command: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """A database without the code tables gets a hint, not just the driver's message."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except StoreError as exc:
            text = str(exc)
            if "actor_code_history" in text or "script_code" in text or "exec_mode" in text:
                raise StoreError(
                    f"{text} (run `actor-supervisor migrate` on this database first)"
                ) from exc
            raise

    return run


# --- drift -----------------------------------------------------------------------------------


@_with_schema_hint
def cmd_drift(args: argparse.Namespace) -> int:
    config, store = _store(args)
    try:
        names = args.actors or sorted(config.actors)
        actors = [_actor(config, name) for name in names]
        stored = store.load_code_states(names)
    finally:
        store.close()
    rows: list[dict[str, Any]] = []
    for actor in actors:
        state = stored.get(actor.name)
        snap = read_snapshot(actor.script, scan=actor.python) if actor.versioned else None
        active_sha = state.script_code_hash if state and state.active_history_id else None
        if not actor.versioned:
            status = UNVERSIONED
        elif snap is None:
            status = FILE_MISSING
        else:
            status = SYNCED if snap.sha256 == active_sha else DRIFT_DETECTED
        rows.append(
            {
                "actor": actor.name,
                "status": status,
                "file_path": str(actor.script),
                "files": list(snap.files) if snap else [],
                "file_sha256": snap.sha256 if snap else None,
                "active_sha256": active_sha,
                "active_version": state.active_version if state else None,
                "active_history_id": state.active_history_id if state else None,
                "changed_since_sync": bool(
                    snap and state and snap.sha256 != state.script_file_hash
                ),
                "exec_mode": actor.exec_mode,
                "sync": actor.sync,
            }
        )
    if args.json:
        print(orjson.dumps(rows).decode())
        return EXIT_OK
    table(
        ["ACTOR", "STATUS", "ACTIVE", "FILE SHA256", "ACTIVE SHA256", "EXEC MODE", "SYNC"],
        [
            [r["actor"], r["status"], r["active_version"] or "-", _short(r["file_sha256"]),
             _short(r["active_sha256"]), r["exec_mode"], r["sync"]]
            for r in rows
        ],
    )  # fmt: skip
    return EXIT_OK


# --- deploy ----------------------------------------------------------------------------------


@_with_schema_hint
def cmd_deploy(args: argparse.Namespace) -> int:
    if bool(args.actor) == bool(args.all):
        raise ConfigError("deploy: give one ACTOR, or --all")
    if args.all and args.version:
        raise ConfigError("deploy --all: --version applies to one actor; leave it out")
    if args.version:
        try:
            check_version(args.version)
        except CodeError as exc:
            raise ConfigError(f"--version: {exc}") from None
    config, store = _store(args)
    try:
        who = _runs_as(config)
        if args.all:
            results = [_deploy_one(args, store, a, who, quiet=True) for a in _all(config)]
        else:
            results = [_deploy_one(args, store, _actor(config, args.actor), who, quiet=False)]
    finally:
        store.close()
    for result in results:
        if result.get("recorded"):
            result["supervisor"] = _refresh(args, result["actor"])
    if args.json:
        print(orjson.dumps(results if args.all else results[0]).decode())
        return EXIT_OK
    for result in results:
        print(_deploy_text(result))
    if args.all:
        print(summary_line(_deploy_counts(results)))
    return EXIT_OK


def _deploy_counts(results: list[dict[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(SUMMARY_KEYS, 0)
    for result in results:
        skipped = result.get("skipped")
        counts[
            "changed" if not skipped else "unchanged" if skipped == "unchanged" else "failed"
        ] += 1
    return counts


def _all(config: Config) -> list[ActorConfig]:
    return [config.actors[name] for name in sorted(config.actors)]


def _runs_as(config: Config) -> RunsAs | None:
    try:
        return runs_as(config)
    except AccessCheckError as exc:
        raise ConfigError(f"run_as: {exc}") from None


def _deploy_one(
    args: argparse.Namespace,
    store: Store,
    actor: ActorConfig,
    who: RunsAs | None,
    *,
    quiet: bool,
) -> dict[str, Any]:
    """Record ``actor``'s file as a new version; with ``quiet`` (``--all``), a file that cannot
    be recorded is reported in the result instead of refusing the whole command. ``who``: the
    user runs read files as; a file it may not read is not recorded."""
    try:
        snap, text, others = _read(actor, who)
        recorded = store.record_code_version(
            CodeChange(
                history_id=events.new_id(),
                actor=actor.name,
                script_code=text,
                script_code_hash=snap.sha256,
                bundle_files=others or None,
                change_type=MANUAL_DEPLOY,
                change_reason=args.changelog,
                changed_by=args.by or os_user(),
                changed_at=time.time(),
                source_file_path=str(actor.script),
                source_file_mtime=snap.mtime,
                version_tag=args.version,
                git_commit_hash=git_commit(actor.script),
                only_if_changed=True,
                synced_file=True,
            )
        )
    except VersionExists as exc:
        raise CommandRefused("version_exists", str(exc)) from None
    except CommandRefused as exc:
        if not quiet:
            raise
        skipped = recorded_dict(actor.name, CodeRecorded(None, None, None))
        return {**skipped, "skipped": exc.code, "message": str(exc)}
    return recorded_dict(actor.name, recorded)


def _read(actor: ActorConfig, who: RunsAs | None) -> tuple[FileSnapshot, str, dict[str, str]]:
    """The actor's bundle as it is on disk: the snapshot, the entry's text, the others'."""
    if not actor.versioned:
        raise CommandRefused(
            "not_versioned",
            f"{actor.name}: its program {actor.script} lies outside the configuration's "
            "folder, so it is not versioned",
        )
    snap = read_snapshot(actor.script, scan=actor.python, runs_as=who)
    if snap is None:
        raise CommandRefused(
            "file_missing", f"{actor.name}: no script file its runs may read at {actor.script}"
        )
    try:
        return snap, snap.text(), snap.texts()
    except CodeError as exc:
        raise CommandRefused("not_text", str(exc)) from None


def _deploy_text(result: dict[str, Any]) -> str:
    actor = result["actor"]
    if result["skipped"] == "unchanged":
        return (
            f"{actor}: unchanged (the file is the active version {result['version']}); "
            "nothing recorded"
        )
    if result["skipped"]:
        return f"{actor}: skipped: {result['message']}"
    was = f", was {result['previous_version']}" if result["previous_version"] else ""
    return (
        f"{actor}: deployed version {result['version']} (sha256 {_short(result['code_sha256'])}, "
        f"history {result['history_id']}{was}); {result['supervisor']}"
    )


# --- the running supervisor --------------------------------------------------------------------


def _refresh(args: argparse.Namespace, actor: str) -> str:
    """Tell a running supervisor (best effort) to use the actor's active version now."""
    tried = "the supervisor"
    try:
        config = load(args, "control")
        tried = endpoint_origin(config)
        with client_for(config, timeout_s=REFRESH_TIMEOUT_S) as client:
            if not _listening(client.endpoint):
                return f"no supervisor listening at {tried}: the next start uses it"
            answer = client.refresh(actor)
    except ClientTimeout:
        return (
            f"no answer from {tried} within {REFRESH_TIMEOUT_S:g}s: a supervisor there uses it "
            "from its next start"
        )
    except ClientError as exc:
        return f"the supervisor at {tried} did not confirm ({exc}): it uses it from its next start"
    except ConfigError as exc:
        return f"could not reach {tried} ({exc}): it uses it from its next start"
    return f"the running supervisor uses it now (status {answer.get('status')})"


def _listening(endpoint: str) -> bool:
    """False when nothing can be listening at ``endpoint`` (so there is no reply to wait for)."""
    parts = urlsplit(endpoint)
    if parts.scheme == "ipc":
        return os.path.exists(endpoint[len("ipc://") :])
    if parts.scheme != "tcp" or parts.hostname in (None, "*") or parts.port is None:
        return True
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=1.0).close()
    except ConnectionRefusedError:
        return False
    except OSError:
        return True  # unclear (a firewall, a slow network): let the request find out
    return True


# --- versions, show-code -----------------------------------------------------------------------


@_with_schema_hint
def cmd_versions(args: argparse.Namespace) -> int:
    config, store = _store(args)
    try:
        found = store.code_history(args.actor, limit=args.limit)
    finally:
        store.close()
    if args.json:
        print(orjson.dumps([_version_dict(v) for v in found]).decode())
        return EXIT_OK
    if not found:
        known = "" if args.actor in config.actors else " (and no actor of that name is configured)"
        print(f"{args.actor}: no code versions recorded{known}")
        return EXIT_OK
    table(
        ["VERSION", "ACTIVE", "TYPE", "SHA256", "CHANGED", "BY", "REASON", "GIT", "HISTORY ID"],
        [
            [v.version_tag, "*" if v.is_active else "", v.change_type,
             _short(v.script_code_hash), iso(v.changed_at), v.changed_by or "",
             (v.change_reason or "")[:60], (v.git_commit_hash or "")[:12], v.history_id]
            for v in found
        ],
    )  # fmt: skip
    return EXIT_OK


def _version_dict(version: CodeVersion, *, code: bool = False) -> dict[str, Any]:
    """A version as ``--json`` prints it; without ``code``, its bundle's file names only."""
    data = asdict(version)
    data["active"] = version.is_active
    if not code:
        del data["script_code"], data["bundle_files"]
        data["files"] = list(version.files(_entry_name(version)))
    return data


@_with_schema_hint
def cmd_show_code(args: argparse.Namespace) -> int:
    _, store = _store(args)
    try:
        history = args.history and store.resolve_id("history", args.history)  # or a prefix
        version = store.code_version(args.actor, history_id=history, version_tag=args.version)
    finally:
        store.close()
    if version is None:
        if args.history:
            what = f"no code version with history id {args.history!r}"
        elif args.version:
            what = f"no code version tagged {args.version!r}"
        else:
            what = "no active code version (nothing was ever synced or deployed)"
        raise CommandRefused(
            "not_found", f"{args.actor}: {what}; `versions {args.actor}` lists them"
        )
    files = version.files(_entry_name(version))
    if args.file is not None:
        if args.file not in files:
            raise CommandRefused(
                "not_found",
                f"{args.actor} {version.version_tag}: no file {args.file!r} in its bundle "
                f"({', '.join(files)})",
            )
        files = {args.file: files[args.file]}
    if args.json:
        print(orjson.dumps({**_version_dict(version, code=True), "files": files}).decode())
    elif len(files) == 1:
        sys.stdout.write(next(iter(files.values())))
    else:  # the way head(1) shows several files
        sys.stdout.write("\n".join(f"==> {rel} <==\n{code}" for rel, code in files.items()))
    return EXIT_OK


def _entry_name(version: CodeVersion) -> str:
    """The entry script's file name in a version's bundle."""
    return Path(version.source_file_path).name if version.source_file_path else "script"


# --- rollback ----------------------------------------------------------------------------------


@_with_schema_hint
def cmd_rollback(args: argparse.Namespace) -> int:
    config, store = _store(args)
    try:
        actor = _actor(config, args.actor)
        target, recorded = rollback(
            store, actor.name, actor.exec_mode, actor.script,
            write_file=bool(args.write_file), to_version=args.to_version,
            to_history=args.to_history, reason=args.reason, by=args.by or os_user(),
        )  # fmt: skip
    finally:
        store.close()
    result = rollback_dict(actor.name, target, recorded, file_written=bool(args.write_file))
    if recorded.version is not None:
        result["supervisor"] = _refresh(args, actor.name)
    if args.json:
        print(orjson.dumps(result).decode())
        return EXIT_OK
    count = 1 + len(target.bundle_files or {})
    files = f"its {count} files beside {actor.script}" if count > 1 else f"it to {actor.script}"
    written = f"; wrote {files}" if args.write_file else ""
    if recorded.version is None:
        print(
            f"{actor.name}: the code of {target.version_tag} is already active "
            f"({result['version']}); nothing recorded{written}"
        )
    else:
        print(
            f"{actor.name}: rolled back to {target.version_tag}'s code as version "
            f"{result['version']} (history {result['history_id']}){written}; "
            f"{result['supervisor']}"
        )
    return EXIT_OK


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "-"
