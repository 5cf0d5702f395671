"""The run commands: ``start`` runs the supervisor in the foreground; ``submit``, ``trigger``,
``pause``, ``resume`` and ``status`` talk to a running one over its control endpoint.
"""

import argparse
import sys
from typing import Any

import orjson

from protocol.client import Accepted
from supervisor.cli.check import cmd_check
from supervisor.cli.common import (
    EXIT_OK,
    EXIT_RUN_FAILED,
    ask,
    client_flags,
    command,
    config_flag,
    connect,
    load,
    print_json_or,
    print_outcome,
    table,
)
from supervisor.errors import ConfigError
from supervisor.events import short_id
from supervisor.settings import SETTINGS
from supervisor.settings_kinds import Boolean, Choice, Integer, Number
from workers.logs import setup_logging

NON_SETTING_START_FLAGS = ("--standby", "--dry-run", "--json")  # what start has beside SETTINGS
EXIT_STOPPED_STARTING = 128 + 15  # as if SIGTERM had killed it, which it asked for
CONTROL_TIMEOUT_S = 10.0  # trigger, pause, resume
RELOAD_TIMEOUT_S = 30.0  # hashing many changed scripts takes a while
STATUS_TIMEOUT_S = 3.0  # a live supervisor answers status from memory in milliseconds


def add_run_commands(sub: Any) -> None:
    start = command(sub, "start", "run the supervisor in the foreground", cmd_start)
    config_flag(start)
    add_setting_flags(start)
    start.add_argument(
        "--standby",
        action="store_true",
        help="if another supervisor holds the store, wait and take over when it stops",
    )
    start.add_argument(
        "--dry-run",
        action="store_true",
        help="check the configuration, scripts, store and schedules, then exit (as `check`)",
    )
    start.add_argument("--json", action="store_true", help="with --dry-run: machine-readable")

    submit = command(sub, "submit", "queue a run of an actor", cmd_submit)
    submit.add_argument("actor")
    submit.add_argument("--input", help="the JSON document for the script's stdin")
    submit.add_argument("--wait", action="store_true", help="wait for the final outcome")
    submit.add_argument("--timeout", type=float, help="seconds to wait (default 600 with --wait)")
    submit.add_argument("--idempotency-key", help="a repeated key returns the earlier run")
    client_flags(submit)

    trigger = command(sub, "trigger", "run an actor now, outside its schedule", cmd_trigger)
    trigger.add_argument("actor")
    trigger.add_argument("--input", help="the JSON document (default: the configured input)")
    trigger.add_argument("--force", action="store_true", help="run even if the actor is paused")
    client_flags(trigger)

    pause = command(sub, "pause", "stop scheduling an actor", cmd_pause)
    pause.add_argument("actor")
    pause.add_argument("--reason", help="why; kept in the actor's state and event")
    client_flags(pause)

    resume = command(sub, "resume", "resume a paused actor", cmd_resume)
    resume.add_argument("actor")
    client_flags(resume)

    reload = command(
        sub,
        "reload",
        "reload the configuration file of a running supervisor (as SIGHUP) and say what changed",
        cmd_reload,
    )
    client_flags(reload)

    status = command(sub, "status", "workers, actors and store of a running supervisor", cmd_status)
    client_flags(status)
    status.add_argument(
        "--timeout",
        type=float,
        default=STATUS_TIMEOUT_S,
        help=f"seconds to wait for the supervisor's answer (default {STATUS_TIMEOUT_S:g})",
    )
    status.add_argument(
        "--check",
        action="store_true",
        help="exit 1 (and say why) unless the store is healthy and at least one worker is ready",
    )


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``[supervisor]`` setting that declares one, with the table's help: the two
    cannot drift. A ``--no-`` flag of a boolean setting sets it to false."""
    for setting in START_SETTINGS:
        flag = setting.flag
        assert flag is not None
        help_text = f"{setting.help} [{setting.env_var}]"
        if isinstance(setting.kind, Boolean):
            value = not flag.startswith("--no-")
            if not value:
                help_text = f"do not {setting.help} [{setting.env_var}=0]"
            parser.add_argument(
                flag, dest=setting.name, action="store_const", const=value, help=help_text
            )
            continue
        kind = setting.kind
        parser.add_argument(
            flag,
            dest=setting.name,
            type=int if isinstance(kind, Integer) else float if isinstance(kind, Number) else str,
            choices=kind.choices if isinstance(kind, Choice) else None,
            metavar=None if isinstance(kind, Choice) else setting.name.upper(),
            help=help_text,
        )


START_SETTINGS = tuple(s for s in SETTINGS if s.flag is not None)


def cmd_start(args: argparse.Namespace) -> int:
    from supervisor.core import Supervisor  # the heavy imports only where they are needed

    flags = tuple(setting.name for setting in START_SETTINGS)
    if args.dry_run:
        return cmd_check(args, flags)
    from supervisor.startup import StartupInterrupted, stop_signals_unwind

    config = load(args, *flags)
    setup_logging(config.supervisor.log_level, config.supervisor.log_format)
    overrides = {name: getattr(args, name) for name in flags}
    try:
        with stop_signals_unwind():  # the loop installs its own handlers once running
            supervisor = Supervisor(config, overrides=overrides, standby=args.standby)
    except StartupInterrupted as exc:
        print(f"actor-supervisor: {exc}; nothing was started", file=sys.stderr)
        return EXIT_STOPPED_STARTING
    return supervisor.run()


def cmd_submit(args: argparse.Namespace) -> int:
    value = _parse_input(args.input)
    timeout = args.timeout if args.timeout is not None else (600.0 if args.wait else 10.0)
    with connect(args, timeout_s=timeout) as client:
        answer = client.submit(
            args.actor, value, wait=args.wait, idempotency_key=args.idempotency_key
        )
    if isinstance(answer, Accepted):
        print_json_or(args, _accepted_dict(answer), f"accepted: run {answer.run_id}")
        return EXIT_OK
    print_outcome(args, answer)
    return EXIT_OK if answer.succeeded else EXIT_RUN_FAILED


def _parse_input(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"--input: not valid JSON: {exc}") from exc


def _accepted_dict(accepted: Accepted) -> dict[str, Any]:
    return {
        "run_id": accepted.run_id,
        "actor": accepted.actor,
        "deduplicated": accepted.deduplicated,
    }


def cmd_trigger(args: argparse.Namespace) -> int:
    value = _parse_input(args.input)
    accepted = ask(
        load(args, "control"),
        CONTROL_TIMEOUT_S,
        lambda client: client.trigger(args.actor, value, force=args.force),
    )
    print_json_or(args, _accepted_dict(accepted), f"triggered: run {accepted.run_id}")
    return EXIT_OK


def cmd_pause(args: argparse.Namespace) -> int:
    data = ask(load(args, "control"), CONTROL_TIMEOUT_S, lambda c: c.pause(args.actor, args.reason))
    print_json_or(args, data, f"{args.actor}: paused")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    data = ask(load(args, "control"), CONTROL_TIMEOUT_S, lambda c: c.resume(args.actor))
    print_json_or(args, data, f"{args.actor}: resumed")
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    """Exit 0 with what changed; 5 (refused) with the error when the file is invalid."""
    answer = ask(load(args, "control"), RELOAD_TIMEOUT_S, lambda client: client.reload())
    print_json_or(args, answer, _reload_text(answer))
    return EXIT_OK


def _reload_text(answer: dict[str, Any]) -> str:
    parts = [
        f"{label}: {', '.join(answer[key])}"
        for key, label in (
            ("added", "actors added"),
            ("removed", "actors removed"),
            ("changed", "actors changed"),
            ("settings_applied", "settings applied"),
            ("restart_needed", "settings that need a restart"),
        )
        if answer[key]
    ]
    if answer.get("alerts_changed"):
        parts.append("[[alerts]] changed: they apply at the next restart")
    return (
        "reloaded "
        + (answer["config"] or "the configuration")
        + ("\n" + "\n".join(parts) if parts else ": nothing changed")
    )


def cmd_status(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise ConfigError(f"--timeout: expected seconds > 0, got {args.timeout:g}")
    data = ask(load(args, "control"), args.timeout, lambda client: client.status())
    problems = status_problems(data) if args.check else []
    if args.json:
        print(orjson.dumps({**data, "problems": problems} if args.check else data).decode())
    else:
        _print_status(data)
        for problem in problems:
            print(f"check failed: {problem}", file=sys.stderr)
    return EXIT_RUN_FAILED if problems else EXIT_OK


def status_problems(data: dict[str, Any]) -> list[str]:
    """Why ``status --check`` fails: a degraded store, no ready worker, not running."""
    problems = []
    phase = data["supervisor"]["phase"]
    if phase != "running":
        problems.append(f"the supervisor is {phase}, not running")
    store = data["store"]
    if store["degraded"]:
        problems.append(
            f"the store is degraded: {store['spool_depth']} record(s) spooled, last error: "
            f"{store['last_error'] or 'unknown'}"
        )
    ready = sum(1 for w in data["workers"] if w["ready"])
    if ready == 0:
        problems.append(f"no worker is ready (0 of {len(data['workers'])})")
    return problems


def _print_status(data: dict[str, Any]) -> None:
    sup, queue, store = data["supervisor"], data["queue"], data["store"]
    print(
        f"supervisor pid {sup['pid']} {sup['phase']}, up {sup['uptime_s']:.0f}s, "
        f"control {sup['control']}"
    )
    print(
        f"queue: {queue['ready']} ready, {queue['in_flight']} in flight; store {store['database']}"
        + (f" DEGRADED (spool: {store['spool_depth']} records)" if store["degraded"] else "")
    )
    if (alerts := data.get("alerts")) is not None:
        print(
            f"alerts: {alerts['pending']} pending, {alerts['delivered']} delivered, "
            f"{alerts['failed']} failed since start"
        )
    table(
        ["SLOT", "WORKER", "PID", "STATE", "IN FLIGHT", "CURRENT RUN", "DONE", "FAILED", "RSS MB"],
        [
            [w["slot"], w["worker_id"], w["pid"], w["state"], w["in_flight"],
             short_id(w["current_run"] or "-"), w["runs_done"], w["runs_failed"],
             f"{w['rss_kb'] / 1024:.0f}"]
            for w in data["workers"]
        ],
    )  # fmt: skip
    print()
    table(
        ["ACTOR", "SCHEDULE", "NEXT DUE", "PAUSED", "FAILURES", "ACTIVE", "LAST RUN", "STATUS",
         "ENDED"],
        [
            [a["name"], _schedule_text(a["schedule"]), a["next_due"] or "-",
             "yes" if a["paused"] else "no", a["consecutive_failures"], a["active_runs"],
             short_id((a["last_run"] or {}).get("run_id", "-")),
             (a["last_run"] or {}).get("status", "-"),
             (a["last_run"] or {}).get("finished_at") or "-"]
            for a in data["actors"]
        ],
    )  # fmt: skip
    for a in data["actors"]:  # the why, below the table: these texts are long
        if a["paused"]:
            print(f"{a['name']}: paused: {a['paused_reason'] or 'no reason given'}")
        last = a.get("last_run") or {}
        if last and last.get("status") != "succeeded":
            why = last.get("reason") or last.get("status")
            said = f" (stderr: {last['stderr_last_line']})" if last.get("stderr_last_line") else ""
            print(f"{a['name']}: last run {last['run_id']} {why}: {last.get('error') or '-'}{said}")
    if runs := data.get("workflows"):  # unfinished workflow runs (`workflow status`: all)
        print()
        table(
            ["WORKFLOW RUN", "WORKFLOW", "STATUS", "DONE", "FAILED", "TOTAL", "WAVE"],
            [[short_id(r["workflow_run_id"]), r["workflow"], r["status"], r["done"], r["failed"],
              r["items"], f"{min(r['wave'] + 1, r['waves'])}/{r['waves']}"] for r in runs],
        )  # fmt: skip


def _schedule_text(schedule: dict[str, Any] | None) -> str:
    if not schedule:
        return "on demand"
    details = " ".join(str(v) for k, v in schedule.items() if k != "type")
    return f"{schedule['type']} {details}".strip()
