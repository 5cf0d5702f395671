"""The store commands, straight on the database: ``history``, ``events`` and ``migrate``."""

import argparse
from dataclasses import asdict
from typing import Any

import orjson

from supervisor.cli.common import (
    EXIT_OK,
    command,
    count,
    open_store_from,
    print_json_or,
    store_flags,
    table,
)
from supervisor.errors import ConfigError
from supervisor.records import Event, RunRecord
from supervisor.status import iso


def add_read_commands(sub: Any) -> None:
    history = command(sub, "history", "recorded runs, newest first", cmd_history)
    history.add_argument("actor", nargs="?")
    history.add_argument("--run", dest="run_id", help="only the attempts of this run")
    history.add_argument("--limit", type=count, default=20)
    store_flags(history)

    events_cmd = command(sub, "events", "the event store, oldest first", cmd_events)
    group = events_cmd.add_mutually_exclusive_group()
    group.add_argument("--run", dest="run_id", help="events of one run")
    group.add_argument("--actor", help="events of one actor (not of its runs)")
    group.add_argument("--correlation", help="events with this correlation id")
    events_cmd.add_argument("--since", help="ISO-8601 time or epoch seconds")
    events_cmd.add_argument("--limit", type=count, default=1000)
    store_flags(events_cmd)

    migrate = command(sub, "migrate", "apply the database migrations", cmd_migrate)
    store_flags(migrate)


def cmd_history(args: argparse.Namespace) -> int:
    store = open_store_from(args, read_only=True)
    try:
        runs = _attempts_together(
            store.list_runs(actor=args.actor, run_id=args.run_id, limit=args.limit)
        )
    finally:
        store.close()
    if args.json:
        print(orjson.dumps([_run_dict(r) for r in runs]).decode())
        return EXIT_OK
    table(
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
    store = open_store_from(args, read_only=True)
    try:
        found: list[Event] = store.list_events(**filters)
    finally:
        store.close()
    if args.json:
        print(orjson.dumps([asdict(e) for e in found]).decode())
        return EXIT_OK
    table(
        ["CREATED", "TYPE", "AGGREGATE", "ID", "METADATA"],
        [[iso(e.created_at), e.event_type, e.aggregate_type, e.aggregate_id[:12],
          orjson.dumps(e.metadata).decode()[:80]] for e in found],
    )  # fmt: skip
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    store = open_store_from(args, create=True)
    try:
        applied = store.migrate()
    finally:
        store.close()
    print_json_or(
        args,
        {"applied": applied, "database": store.description},
        f"applied: {', '.join(applied)}" if applied else "the schema is up to date",
    )
    return EXIT_OK
