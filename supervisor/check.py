"""``actor-supervisor check`` (and ``start --dry-run``): would this configuration start?

It validates the configuration, checks that the sandbox user can read every script (each file
of its code bundle) and which interpreter will run it, or can execute a command actor's
program, and can change no code the supervisor imports as root (the start-up checks of
:mod:`supervisor.preflight`), connects to the store read-only
and lists pending migrations, and shows each actor's next fires in its zone and in UTC. It
starts nothing, writes nothing and migrates nothing: a SQLite file that does not exist is not
created, and one that exists is opened read-only.
"""

import contextlib
import os
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from supervisor.code.sync import read_snapshot
from supervisor.config import ActorConfig, Config
from supervisor.controlkeys import control_endpoint
from supervisor.errors import ConfigError, StartupError
from supervisor.preflight import (
    alert_uid_problem,
    checked_as,
    resolve_python,
    runs_reach,
    tmp_mb_unenforced,
)
from supervisor.schedule import load_zone
from supervisor.store.base import StoreError
from supervisor.store.migrations import (
    load_migrations,
    pg_applied_versions,
    sqlite_applied_versions,
)
from supervisor.store.urls import parse_store_url, redact_url
from workers.access import AccessCheckError, resolve_user, unexecutable, unreadable_scripts

NEXT_FIRES = 5


@dataclass
class Report:
    """What ``check`` found; ``ok`` is False when any problem was found."""

    config: str | None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    actors: list[dict[str, Any]] = field(default_factory=list)
    store: dict[str, Any] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    control: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "config": self.config,
            "problems": self.problems,
            "warnings": self.warnings,
            "control": self.control,
            "store": self.store,
            "actors": self.actors,
            "alerts": self.alerts,
        }


def check(config: Config, *, now: float | None = None) -> Report:
    """Run every check on an already validated configuration."""
    now = time.time() if now is None else now
    report = Report(config=str(config.path) if config.path else None)
    try:
        report.control = control_endpoint(config)
    except ConfigError as exc:
        report.problems.append(str(exc))
    run_as = _sandbox_user(config, report)
    if (unenforced := tmp_mb_unenforced(config)) is not None:
        report.warnings.append(unenforced)
    if os.geteuid() == 0 and config.sources.get("run_as", "default") == "default":
        low, high = config.supervisor.run_as_range
        if (problem := alert_uid_problem(config, tuple(range(low, high + 1)))) is not None:
            report.problems.append(problem)
    imports_as = None
    with contextlib.suppress(AccessCheckError):  # an unknown run_as: _sandbox_user said so
        imports_as = checked_as(config)
    if imports_as is not None and imports_as[0] != 0:  # root (allowed) may write anything
        try:
            reach = runs_reach(config, imports_as)
            report.problems += reach.problems
            report.warnings += reach.warnings
        except AccessCheckError as exc:
            report.problems.append(f"run_as = {config.supervisor.run_as!r}: {exc}")
    for actor in config.actors.values():
        report.actors.append(_actor(actor, config, run_as, report, now))
    report.store = _store(config, report)
    report.alerts = [alert.describe() for alert in config.alerts]
    return report


def _sandbox_user(config: Config, report: Report) -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    try:
        return resolve_user(config.supervisor.run_as)
    except AccessCheckError as exc:
        report.problems.append(f"run_as = {config.supervisor.run_as!r}: {exc}")
        return None


def _actor(
    actor: ActorConfig, config: Config, run_as: tuple[int, int] | None, report: Report, now: float
) -> dict[str, Any]:
    script = str(actor.script)
    found: dict[str, Any] = {
        "name": actor.name,
        "script": script,
        "mode": actor.mode,
        "exec_mode": actor.exec_mode,
        "run_as": config.supervisor.run_as if run_as is not None else None,
        "readable": None,
        "interpreter": None,
        "schedule": actor.schedule.describe() if actor.schedule else None,
        "timezone": actor.timezone,
        "next_fires": _next_fires(actor, now),
    }
    if actor.command:
        return _program(actor, run_as, report, found)
    if not actor.script.is_file():
        message = f"actor {actor.name}: no such script file {script!r}"
        if actor.exec_mode == "file":
            report.problems.append(message)
        else:  # database/auto: the stored code runs, if there is any
            report.warnings.append(message + " (it runs its stored code, if any)")
        found["readable"] = False
    else:
        snap = read_snapshot(actor.script)
        found["files"] = list(snap.files) if snap else [actor.script.name]
        paths = [actor.script.parent / rel for rel in found["files"]]
        found["readable"] = _readable(actor, paths, run_as, report)
    found["interpreter"] = _interpreter(actor, config, run_as, report)
    return found


def _program(
    actor: ActorConfig, run_as: tuple[int, int] | None, report: Report, found: dict[str, Any]
) -> dict[str, Any]:
    """A command actor: its program must exist and be executable by the sandbox user."""
    found.update(
        command=list(actor.command),
        versioned=actor.versioned,
        executable=False,
        interpreter="the program itself, exec'd in the sandbox",
    )
    if not actor.script.is_file():
        report.problems.append(f"actor {actor.name}: no such program {str(actor.script)!r}")
        found["readable"] = False
        return found
    try:
        if run_as is not None:
            problems = unexecutable([str(actor.script)], *run_as)
        elif not os.access(actor.script, os.X_OK):
            problems = [f"{actor.script}: not executable by this user"]
        else:
            problems = []
    except AccessCheckError as exc:
        problems = [str(exc)]
    report.problems.extend(f"actor {actor.name}: {problem}" for problem in problems)
    found["readable"] = found["executable"] = not problems
    return found


def _readable(
    actor: ActorConfig, paths: list[Path], run_as: tuple[int, int] | None, report: Report
) -> bool:
    """Every file of the script's bundle must be readable by the sandbox user."""
    try:
        if run_as is not None:
            problems = unreadable_scripts([str(p) for p in paths], *run_as)
        else:
            problems = [
                f"{p}: not readable by this user" for p in paths if not os.access(p, os.R_OK)
            ]
    except AccessCheckError as exc:
        problems = [str(exc)]
    for problem in problems:
        report.problems.append(f"actor {actor.name}: {problem}")
    return not problems


def _interpreter(
    actor: ActorConfig, config: Config, run_as: tuple[int, int] | None, report: Report
) -> str | None:
    if actor.mode == "fork":
        return f"{sys.executable} (the warm launcher, forked)"
    try:
        return resolve_python(config.supervisor.python, run_as, needed=True)
    except (StartupError, AccessCheckError) as exc:
        report.problems.append(f"actor {actor.name}: {exc}")
        return None


def _next_fires(actor: ActorConfig, now: float) -> list[dict[str, str]]:
    schedule = actor.schedule
    if schedule is None:
        return []
    zone = load_zone(actor.timezone)
    fires: list[dict[str, str]] = []
    due = schedule.first_due(now)
    while due is not None and len(fires) < NEXT_FIRES:
        fires.append({
            "local": datetime.fromtimestamp(due, zone).isoformat(timespec="seconds"),
            "utc": datetime.fromtimestamp(due, UTC).isoformat(timespec="seconds"),
        })  # fmt: skip
        due = schedule.next_due(due)
    return fires


# --- the store, read-only ------------------------------------------------------------------


def _store(config: Config, report: Report) -> dict[str, Any]:
    settings = config.supervisor
    try:
        parsed = parse_store_url(settings.database, base_dir=config.base_dir)
    except ConfigError as exc:
        report.problems.append(str(exc))
        return {"database": redact_url(settings.database), "reachable": False}
    backend = "sqlite" if parsed.path is not None else "postgres"
    found: dict[str, Any] = {"database": parsed.description, "reachable": False}
    try:
        known = {m.version: m.name for m in load_migrations(backend)}
        if parsed.path is not None:
            applied = _sqlite_applied(parsed.path)
        else:
            applied = _postgres_applied(parsed.url, settings.pool_connect_timeout_s)
    except (StoreError, OSError, sqlite3.Error) as exc:
        report.problems.append(f"store {parsed.description}: {exc}")
        return found
    except Exception as exc:  # psycopg's errors: the module is imported only for PostgreSQL
        report.problems.append(f"store {parsed.description}: {_one_line(exc)}")
        return found
    found["reachable"] = True
    if applied is None:
        found["exists"] = False
        applied = set()
        report.warnings.append(
            f"store {parsed.description}: no database yet; start creates it"
            + ("" if settings.migrate else " (but migrate = false: run `migrate` first)")
        )
    else:
        found["exists"] = True
    newer = sorted(v for v in applied if v not in known and v > max(known, default=0))
    if newer:
        report.problems.append(
            f"store {parsed.description}: the database is at schema version {max(newer)}, "
            f"beyond this actor-supervisor's {max(known)}; upgrade actor-supervisor"
        )
    found["pending_migrations"] = [known[v] for v in sorted(known) if v not in applied]
    if found["pending_migrations"] and not settings.migrate:
        report.problems.append(
            f"store {parsed.description}: migrations pending and migrate = false: "
            + ", ".join(found["pending_migrations"])
        )
    return found


def _sqlite_applied(path: Path) -> set[int] | None:
    """The applied migration versions, read through a read-only connection; None: no file."""
    if not path.exists():
        return None
    # With no WAL file beside it (no supervisor running, last one closed cleanly) the file is
    # opened immutable, which creates no -wal/-shm files; otherwise read-only, through them.
    wal = path.with_name(path.name + "-wal").exists()
    conn = sqlite3.connect(f"{path.as_uri()}?{'mode=ro' if wal else 'immutable=1'}", uri=True)
    try:
        return sqlite_applied_versions(conn)
    finally:
        conn.close()


def _postgres_applied(url: str, timeout_s: float) -> set[int]:
    import psycopg  # only for PostgreSQL

    with psycopg.connect(url, connect_timeout=max(1, int(timeout_s)), autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = on")
        return pg_applied_versions(conn)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --- output ----------------------------------------------------------------------------------


def render(report: Report) -> str:
    """The report for people."""
    lines = [f"configuration: {report.config or '(none: defaults)'}"]
    lines.append(f"control endpoint: {report.control or '-'}")
    store = report.store
    pending = store.get("pending_migrations")
    lines.append(
        f"store: {store.get('database')}"
        + ("" if store.get("reachable") else " (not reachable)")
        + (f"; pending migrations: {', '.join(pending)}" if pending else "")
        + ("; schema up to date" if pending == [] else "")
    )
    for actor in report.actors:
        lines.append("")
        readable = {True: "yes", False: "NO", None: "-"}[actor["readable"]]
        who = f" by {actor['run_as']}" if actor["run_as"] else ""
        if "command" in actor:
            lines.append(f"actor {actor['name']}: command {' '.join(actor['command'])}")
            versioned = "versioned" if actor["versioned"] else "not versioned (outside the config)"
            lines.append(f"  program {actor['script']}: {versioned}; executable{who}: {readable}")
        else:
            files = actor.get("files") or []
            bundle = f" (+ {', '.join(files[1:])})" if len(files) > 1 else ""
            lines.append(f"actor {actor['name']}: {actor['script']}{bundle}")
            lines.append(
                f"  readable{who}: {readable}; {actor['mode']} mode: {actor['interpreter']}"
            )
        if not actor["next_fires"]:
            lines.append("  on demand only" if actor["schedule"] is None else "  no more fires")
        for fire in actor["next_fires"]:
            lines.append(f"  next: {fire['local']} ({actor['timezone']})  {fire['utc']} UTC")
    for alert in report.alerts:
        target = alert["webhook"] or " ".join(alert["command"] or [])
        lines.append("")
        lines.append(f"alerts {alert['name']}: {target} <- {', '.join(alert['events'])}")
    lines.append("")
    lines.extend(f"warning: {w}" for w in report.warnings)
    lines.extend(f"PROBLEM: {p}" for p in report.problems)
    lines.append("ok" if report.ok else f"{len(report.problems)} problem(s)")
    return "\n".join(lines)
