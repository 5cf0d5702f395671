"""The ``actor-supervisor`` command: ``start`` runs the supervisor in the foreground; the others
talk to a running one over its control endpoint (``submit``, ``trigger``, ``pause``,
``resume``, ``status``) or work on the store directly (``history``, ``events``, ``migrate``,
and the code commands of :mod:`supervisor.codecli`: ``drift``, ``deploy``, ``versions``,
``rollback``, ``show-code``).

Settings resolve as: flag, then ``ACTOR_SUPERVISOR_<NAME>`` environment variable, then the
config file, then the default. The config file is ``--config``, else
``$ACTOR_SUPERVISOR_CONFIG``, else ``./supervisor.toml`` when it exists.
"""

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import orjson

from protocol.client import Accepted, Client, ClientError, ClientTimeout, RunOutcome
from supervisor.config import Config, load_config
from supervisor.controlkeys import client_for
from supervisor.errors import CommandRefused, ConfigError, StartupError
from supervisor.records import Event, RunRecord
from supervisor.status import iso
from supervisor.store import open_store, pool_options
from supervisor.store.base import StoreError
from workers.logs import setup_logging

EXIT_OK = 0
EXIT_RUN_FAILED = 1  # submit --wait: the run did not succeed
EXIT_USAGE = 2  # bad flags or configuration (argparse uses 2 as well)
EXIT_UNREACHABLE = 3  # no answer from the supervisor in time
EXIT_STARTUP = 4  # the supervisor could not start, or the store could not be opened
EXIT_REFUSED = 5  # the supervisor (or a code command) refused: unknown actor, busy, ...

EPILOG = """examples:
  actor-supervisor start --config examples/supervisor.toml --workers 8
  actor-supervisor submit greeter --input '{"name": "Ada"}' --wait --config examples/supervisor.toml
  actor-supervisor status --config examples/supervisor.toml
  actor-supervisor history heartbeat --limit 5 --config examples/supervisor.toml
  actor-supervisor deploy greeter --changelog "friendlier" --config examples/supervisor.toml
  actor-supervisor rollback greeter --to-version 1.0.0 --config examples/supervisor.toml
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actor-supervisor",
        description="Run script actors on schedules and on demand, sandboxed and recorded.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    start = _command(sub, "start", "run the supervisor in the foreground", cmd_start)
    _config_flag(start)
    start.add_argument("--workers", type=int, help="worker processes [ACTOR_SUPERVISOR_WORKERS]")
    start.add_argument(
        "--concurrency", type=int, help="runs in flight per worker [ACTOR_SUPERVISOR_CONCURRENCY]"
    )
    start.add_argument(
        "--mode", choices=("fork", "exec"), help="default sandbox mode [ACTOR_SUPERVISOR_MODE]"
    )
    _database_flag(start)
    _control_flag(start)
    start.add_argument(
        "--no-migrate",
        dest="migrate",
        action="store_const",
        const=False,
        help="do not apply pending migrations at start-up [ACTOR_SUPERVISOR_MIGRATE=0]",
    )
    start.add_argument(
        "--http",
        dest="http_listen",
        metavar="HOST:PORT",
        help="serve health, metrics, API and dashboard here [ACTOR_SUPERVISOR_HTTP_LISTEN]",
    )
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

    check = _command(
        sub,
        "check",
        "validate the configuration, scripts, store and schedules; start and write nothing",
        cmd_check,
    )
    _config_flag(check)
    _database_flag(check)
    check.add_argument("--json", action="store_true", help="machine-readable output")

    submit = _command(sub, "submit", "queue a run of an actor", cmd_submit)
    submit.add_argument("actor")
    submit.add_argument("--input", help="the JSON document for the script's stdin")
    submit.add_argument("--wait", action="store_true", help="wait for the final outcome")
    submit.add_argument("--timeout", type=float, help="seconds to wait (default 600 with --wait)")
    submit.add_argument("--idempotency-key", help="a repeated key returns the earlier run")
    _client_flags(submit)

    trigger = _command(sub, "trigger", "run an actor now, outside its schedule", cmd_trigger)
    trigger.add_argument("actor")
    trigger.add_argument("--input", help="the JSON document (default: the configured input)")
    trigger.add_argument("--force", action="store_true", help="run even if the actor is paused")
    _client_flags(trigger)

    pause = _command(sub, "pause", "stop scheduling an actor", cmd_pause)
    pause.add_argument("actor")
    pause.add_argument("--reason", help="why; kept in the actor's state and event")
    _client_flags(pause)

    resume = _command(sub, "resume", "resume a paused actor", cmd_resume)
    resume.add_argument("actor")
    _client_flags(resume)

    status = _command(
        sub, "status", "workers, actors and store of a running supervisor", cmd_status
    )
    _client_flags(status)

    history = _command(sub, "history", "recorded runs, newest first", cmd_history)
    history.add_argument("actor", nargs="?")
    history.add_argument("--run", dest="run_id", help="only the attempts of this run")
    history.add_argument("--limit", type=int, default=20)
    _store_flags(history)

    events_cmd = _command(sub, "events", "the event store, oldest first", cmd_events)
    group = events_cmd.add_mutually_exclusive_group()
    group.add_argument("--run", dest="run_id", help="events of one run")
    group.add_argument("--actor", help="events of one actor (not of its runs)")
    group.add_argument("--correlation", help="events with this correlation id")
    events_cmd.add_argument("--since", help="ISO-8601 time or epoch seconds")
    events_cmd.add_argument("--limit", type=int, default=1000)
    _store_flags(events_cmd)

    migrate = _command(sub, "migrate", "apply the database migrations", cmd_migrate)
    _store_flags(migrate)

    alerts = _command(
        sub, "alerts", "the alert outbox: sent, pending and failed alerts", cmd_alerts
    )
    alerts.add_argument("--status", choices=("pending", "delivered", "failed"))
    alerts.add_argument("--destination", help="only the alerts of this [[alerts]] entry")
    alerts.add_argument("--limit", type=int, default=50)
    _store_flags(alerts)

    from supervisor.codecli import add_code_commands  # it builds on this module's helpers

    add_code_commands(sub)
    return parser


def _command(
    sub: Any, name: str, help_text: str, handler: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=handler)
    return parser


def _config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="TOML config file [ACTOR_SUPERVISOR_CONFIG, ./supervisor.toml]"
    )


def _database_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database", help="sqlite:PATH or postgresql://... [ACTOR_SUPERVISOR_DATABASE]"
    )


def _control_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--control", help="control endpoint [ACTOR_SUPERVISOR_CONTROL]")


def _client_flags(parser: argparse.ArgumentParser) -> None:
    _config_flag(parser)
    _control_flag(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _store_flags(parser: argparse.ArgumentParser) -> None:
    _config_flag(parser)
    _database_flag(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


# --- configuration ------------------------------------------------------------------------


def _config_path(args: argparse.Namespace) -> Path | None:
    if args.config is not None:
        return Path(args.config)
    if env := os.environ.get("ACTOR_SUPERVISOR_CONFIG"):
        return Path(env)
    default = Path("supervisor.toml")
    return default if default.is_file() else None


def _load(args: argparse.Namespace, *flags: str) -> Config:
    overrides = {name: getattr(args, name, None) for name in flags}
    return load_config(_config_path(args), overrides=overrides, environ=os.environ)


def _client(args: argparse.Namespace, timeout_s: float = 10.0) -> Client:
    return client_for(_load(args, "control"), timeout_s=timeout_s)


# --- commands -----------------------------------------------------------------------------


def cmd_start(args: argparse.Namespace) -> int:
    from supervisor.core import Supervisor  # the heavy imports only where they are needed

    flags = ("workers", "concurrency", "mode", "database", "control", "migrate", "http_listen")
    if args.dry_run:
        return cmd_check(args, flags)
    config = _load(args, *flags)
    setup_logging(config.supervisor.log_level, config.supervisor.log_format)
    overrides = {name: getattr(args, name) for name in flags}
    return Supervisor(config, overrides=overrides, standby=args.standby).run()


def cmd_check(args: argparse.Namespace, flags: Sequence[str] = ("database",)) -> int:
    """Exit 0 when the supervisor would start; 2 on an invalid configuration, 4 on any other
    problem (a script the sandbox user cannot read, an unreachable or too new store, ...)."""
    from supervisor.check import Report, check, render

    try:
        config = _load(args, *flags)
    except ConfigError as exc:
        path = _config_path(args)
        report = Report(config=str(path) if path else None, problems=[str(exc)])
        print(orjson.dumps(report.as_dict()).decode() if args.json else render(report))
        return EXIT_USAGE
    report = check(config)
    print(orjson.dumps(report.as_dict()).decode() if args.json else render(report))
    return EXIT_OK if report.ok else EXIT_STARTUP


def _parse_input(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"--input: not valid JSON: {exc}") from exc


def cmd_submit(args: argparse.Namespace) -> int:
    value = _parse_input(args.input)
    timeout = args.timeout if args.timeout is not None else (600.0 if args.wait else 10.0)
    with _client(args, timeout_s=timeout) as client:
        answer = client.submit(
            args.actor, value, wait=args.wait, idempotency_key=args.idempotency_key
        )
    if isinstance(answer, Accepted):
        _print_json_or(args, _accepted_dict(answer), f"accepted: run {answer.run_id}")
        return EXIT_OK
    _print_outcome(args, answer)
    return EXIT_OK if answer.succeeded else EXIT_RUN_FAILED


def _accepted_dict(accepted: Accepted) -> dict[str, Any]:
    return {
        "run_id": accepted.run_id,
        "actor": accepted.actor,
        "deduplicated": accepted.deduplicated,
    }


def _print_outcome(args: argparse.Namespace, outcome: RunOutcome) -> None:
    if args.json:
        print(orjson.dumps(outcome.as_dict()).decode())
        return
    took = f"{outcome.duration_ms:.1f} ms" if outcome.duration_ms is not None else "?"
    line = f"run {outcome.run_id} ({outcome.actor}) {outcome.status} in {took}"
    if outcome.attempts > 1:
        line += f" after {outcome.attempts} attempts"
    if outcome.reason:
        line += f": {outcome.reason}" + (f" ({outcome.error})" if outcome.error else "")
    print(line)
    if outcome.output is not None:
        print(orjson.dumps(outcome.output, option=orjson.OPT_INDENT_2).decode())
    if not outcome.succeeded and outcome.stderr_tail:
        print("--- stderr (tail) ---\n" + outcome.stderr_tail.rstrip(), file=sys.stderr)


def _print_json_or(args: argparse.Namespace, data: Any, text: str) -> None:
    print(orjson.dumps(data).decode() if args.json else text)


def cmd_trigger(args: argparse.Namespace) -> int:
    with _client(args) as client:
        accepted = client.trigger(args.actor, _parse_input(args.input), force=args.force)
    _print_json_or(args, _accepted_dict(accepted), f"triggered: run {accepted.run_id}")
    return EXIT_OK


def cmd_pause(args: argparse.Namespace) -> int:
    with _client(args) as client:
        data = client.pause(args.actor, args.reason)
    _print_json_or(args, data, f"{args.actor}: paused")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    with _client(args) as client:
        data = client.resume(args.actor)
    _print_json_or(args, data, f"{args.actor}: resumed")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        data = client.status()
    if args.json:
        print(orjson.dumps(data).decode())
        return EXIT_OK
    sup, queue, store = data["supervisor"], data["queue"], data["store"]
    print(
        f"supervisor pid {sup['pid']} {sup['phase']}, up {sup['uptime_s']:.0f}s, "
        f"control {sup['control']}"
    )
    print(
        f"queue: {queue['ready']} ready, {queue['in_flight']} in flight; store {store['database']}"
        + (f" DEGRADED (spool: {store['spool_depth']} records)" if store["degraded"] else "")
    )
    _table(
        ["SLOT", "WORKER", "PID", "STATE", "IN FLIGHT", "CURRENT RUN", "DONE", "FAILED", "RSS MB"],
        [
            [w["slot"], w["worker_id"], w["pid"], w["state"], w["in_flight"],
             (w["current_run"] or "-")[:12], w["runs_done"], w["runs_failed"],
             f"{w['rss_kb'] / 1024:.0f}"]
            for w in data["workers"]
        ],
    )  # fmt: skip
    print()
    _table(
        ["ACTOR", "SCHEDULE", "NEXT DUE", "PAUSED", "FAILURES", "ACTIVE"],
        [
            [a["name"], _schedule_text(a["schedule"]), a["next_due"] or "-",
             "yes" if a["paused"] else "no", a["consecutive_failures"], a["active_runs"]]
            for a in data["actors"]
        ],
    )  # fmt: skip
    return EXIT_OK


def _schedule_text(schedule: dict[str, Any] | None) -> str:
    if not schedule:
        return "on demand"
    details = " ".join(str(v) for k, v in schedule.items() if k != "type")
    return f"{schedule['type']} {details}".strip()


def _open_store_from(args: argparse.Namespace, config: Config | None = None) -> Any:
    """The store ``--database`` (or the configuration) names; ``config``: already loaded."""
    settings = (config := config or _load(args, "database")).supervisor
    # A command waits a little for a database that is starting, not the supervisor's minute.
    pool = replace(pool_options(settings), wait_s=min(settings.database_wait_s, 10.0))
    return open_store(settings.database, base_dir=config.base_dir, pool=pool)


def cmd_history(args: argparse.Namespace) -> int:
    store = _open_store_from(args)
    try:
        runs = _attempts_together(
            store.list_runs(actor=args.actor, run_id=args.run_id, limit=args.limit)
        )
    finally:
        store.close()
    if args.json:
        print(orjson.dumps([_run_dict(r) for r in runs]).decode())
        return EXIT_OK
    _table(
        ["QUEUED", "ACTOR", "RUN", "ATTEMPT", "STATUS", "REASON", "MS", "EXIT"],
        [
            [iso(r.queued_at), r.actor, r.run_id[:12], r.attempt, r.status, r.reason or "",
             "" if r.duration_ms is None else f"{r.duration_ms:.1f}",
             "" if r.exit_code is None else r.exit_code]
            for r in runs
        ],
    )  # fmt: skip
    return EXIT_OK


def _attempts_together(runs: list[RunRecord]) -> list[RunRecord]:
    """Newest first, but a run's attempts next to each other (a retry is queued later than
    other runs submitted while it waited): runs by their newest attempt, then attempts."""
    by_run: dict[str, list[RunRecord]] = {}
    for record in runs:
        by_run.setdefault(record.run_id, []).append(record)
    return [record for attempts in by_run.values() for record in attempts]


def _run_dict(record: RunRecord) -> dict[str, Any]:
    data = asdict(record)
    data["output"] = orjson.loads(record.output_json) if record.output_json else None
    data["input"] = orjson.loads(record.input_json)
    del data["output_json"], data["input_json"]
    return data


def _parse_since(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise ConfigError(f"--since: expected ISO-8601 or epoch seconds, got {text!r}") from exc


def cmd_events(args: argparse.Namespace) -> int:
    since = _parse_since(args.since)
    filters: dict[str, Any] = {"since": since, "limit": args.limit}
    if args.run_id:
        filters.update(aggregate_type="run", aggregate_id=args.run_id)
    elif args.actor:
        filters.update(aggregate_type="actor", aggregate_id=args.actor)
    elif args.correlation:
        filters.update(correlation_id=args.correlation)
    store = _open_store_from(args)
    try:
        found: list[Event] = store.list_events(**filters)
    finally:
        store.close()
    if args.json:
        print(orjson.dumps([asdict(e) for e in found]).decode())
        return EXIT_OK
    _table(
        ["CREATED", "TYPE", "AGGREGATE", "ID", "METADATA"],
        [[iso(e.created_at), e.event_type, e.aggregate_type, e.aggregate_id[:12],
          orjson.dumps(e.metadata).decode()[:80]] for e in found],
    )  # fmt: skip
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    store = _open_store_from(args)
    try:
        applied = store.migrate()
    finally:
        store.close()
    _print_json_or(
        args,
        {"applied": applied, "database": store.description},
        f"applied: {', '.join(applied)}" if applied else "the schema is up to date",
    )
    return EXIT_OK


def cmd_alerts(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise ConfigError(f"--limit: must be >= 0, got {args.limit}")
    store = _open_store_from(args)
    try:
        found = store.list_alerts(
            status=args.status, destination=args.destination, limit=args.limit
        )
    finally:
        store.close()
    if args.json:
        print(orjson.dumps([asdict(a) for a in found]).decode())
        return EXIT_OK
    _table(
        ["CREATED", "DESTINATION", "EVENT", "ACTOR", "RUN", "COUNT", "STATUS", "ATTEMPTS",
         "DELIVERED", "LAST ERROR"],
        [[iso(a.created_at), a.destination, a.event, a.actor or "", (a.run_id or "")[:12],
          a.count, a.status, a.attempts, iso(a.delivered_at) if a.delivered_at else "",
          (a.last_error or "")[:60]] for a in found],
    )  # fmt: skip
    return EXIT_OK


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except ConfigError as exc:
        print(f"actor-supervisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandRefused as exc:
        print(f"actor-supervisor: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (StartupError, StoreError) as exc:
        print(f"actor-supervisor: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except ClientTimeout as exc:
        print(f"actor-supervisor: {exc.message}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ClientError as exc:
        print(f"actor-supervisor: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
