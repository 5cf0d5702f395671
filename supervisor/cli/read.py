"""The store commands, straight on the database: ``history``, ``events`` and ``migrate``.

A run or event id they take may be a unique prefix of at least 8 characters
(:meth:`~supervisor.store.base.Store.resolve_id`).
"""

import argparse
import sys
import time
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
from supervisor.events import short_id
from supervisor.records import Event, RunRecord
from supervisor.status import iso

ERROR_CHARS = 60  # of an attempt's error in `history`'s table
EVENTS_LIMIT = 1000
FOLLOW_BACKLOG = 20  # like tail -f: the last few, then what comes


def add_read_commands(sub: Any) -> None:
    history = command(sub, "history", "recorded runs, newest first", cmd_history)
    history.add_argument("actor", nargs="?")
    history.add_argument(
        "--run", dest="run_id", help="only the attempts of this run (a unique prefix will do)"
    )
    history.add_argument("--limit", type=count, default=20)
    store_flags(history)

    events_cmd = command(sub, "events", "the event store, newest first", cmd_events)
    group = events_cmd.add_mutually_exclusive_group()
    group.add_argument("--run", dest="run_id", help="events of one run (a unique prefix will do)")
    group.add_argument("--actor", help="events of one actor (not of its runs)")
    group.add_argument("--correlation", help="events with this correlation id")
    events_cmd.add_argument("--since", help="ISO-8601 time or epoch seconds")
    events_cmd.add_argument(
        "--limit", type=count, help=f"at most this many (default {EVENTS_LIMIT}; "
        f"{FOLLOW_BACKLOG} before --follow streams)",
    )  # fmt: skip
    order = events_cmd.add_mutually_exclusive_group()
    order.add_argument(
        "--oldest-first", "--reverse", dest="oldest_first", action="store_true",
        help="oldest first (the order before newest-first became the default)",
    )  # fmt: skip
    order.add_argument(
        "--before", metavar="EVENT_ID",
        help="page back: only events older than this one (an id or a unique prefix)",
    )  # fmt: skip
    order.add_argument(
        "--follow", "-f", action="store_true",
        help="print the newest --limit events, oldest first, then each new one as it is "
        "committed, until interrupted (--json: one object per line)",
    )  # fmt: skip
    store_flags(events_cmd)

    migrate = command(sub, "migrate", "apply the database migrations", cmd_migrate)
    store_flags(migrate)


def cmd_history(args: argparse.Namespace) -> int:
    store = open_store_from(args, read_only=True)
    try:
        run_id = args.run_id and store.resolve_id("run", args.run_id)
        runs = _attempts_together(
            store.list_runs(actor=args.actor, run_id=run_id, limit=args.limit)
        )
    finally:
        store.close()
    if args.json:
        print(orjson.dumps([_run_dict(r) for r in runs]).decode())
        return EXIT_OK
    table(
        ["QUEUED", "ACTOR", "RUN", "ATTEMPT", "STATUS", "REASON", "MS", "EXIT", "ERROR"],
        [
            [iso(r.queued_at), r.actor, short_id(r.run_id), r.attempt, r.status, r.reason or "",
             "" if r.duration_ms is None else f"{r.duration_ms:.1f}",
             "" if r.exit_code is None else r.exit_code, _short_error(r.error)]
            for r in runs
        ],
    )  # fmt: skip
    return EXIT_OK


def _short_error(error: str | None, width: int = ERROR_CHARS) -> str:
    """An attempt's error on one line, cut to ``width`` (``show`` has all of it)."""
    if not error:
        return ""
    line = " ".join(error.split())
    return line if len(line) <= width else line[: width - 3] + "..."


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
    filters: dict[str, Any] = {"since": since}
    store = open_store_from(args, read_only=True)
    try:
        if args.run_id:
            run_id = store.resolve_id("run", args.run_id)
            filters.update(aggregate_type="run", aggregate_id=run_id)
        elif args.actor:
            filters.update(aggregate_type="actor", aggregate_id=args.actor)
        elif args.correlation:
            filters.update(correlation_id=args.correlation)
        if args.follow:
            return _follow(store, filters, args)
        limit = args.limit or EVENTS_LIMIT
        if args.oldest_first:
            found: list[Event] = store.list_events(**filters, limit=limit)
        else:
            before = args.before and store.resolve_id("event", args.before)
            found = store.find_events(**filters, before=before, limit=limit)
    finally:
        store.close()
    if args.json:
        print(orjson.dumps([asdict(e) for e in found]).decode())
        return EXIT_OK
    table(
        ["CREATED", "TYPE", "AGGREGATE", "ID", "METADATA"],
        [[iso(e.created_at), e.event_type, e.aggregate_type, short_id(e.aggregate_id),
          orjson.dumps(e.metadata).decode()[:80]] for e in found],
    )  # fmt: skip
    return EXIT_OK


FOLLOW_POLL_S = 0.5
# Events are stamped when the supervisor makes them and committed by its writer a batch later,
# so a later commit can carry an earlier time: each poll looks back this far, and the ids seen
# in that window are skipped. (An event committed later still -- replayed from the spool after
# an outage -- is not shown; `events --since` finds it.)
FOLLOW_LOOKBACK_S = 5.0  # the writer commits within batch_max_age_ms (20 ms) when healthy
FOLLOW_PAGE = 1000


def _follow(store: Any, filters: dict[str, Any], args: argparse.Namespace) -> int:
    """``events --follow``: the newest ``--limit`` events, oldest first, then every event as it
    is committed, polling the store by time; until Ctrl-C (exit 130) or a closed pipe."""
    recent: list[Event] = store.find_events(**filters, limit=args.limit or FOLLOW_BACKLOG)
    seen: dict[str, float] = {}
    cursor = recent[0].created_at if recent else time.time()
    _emit(args, reversed(recent), seen)
    while True:
        time.sleep(FOLLOW_POLL_S)
        since = max(cursor - FOLLOW_LOOKBACK_S, filters["since"] or 0.0)
        while True:  # a page at a time, should a burst exceed one
            batch: list[Event] = store.list_events(**{**filters, "since": since}, limit=FOLLOW_PAGE)
            _emit(args, batch, seen)
            if batch:
                cursor = max(cursor, batch[-1].created_at)
            if len(batch) < FOLLOW_PAGE or batch[-1].created_at <= since:
                break
            since = batch[-1].created_at
        horizon = cursor - FOLLOW_LOOKBACK_S
        for event_id in [i for i, at in seen.items() if at < horizon]:
            del seen[event_id]


def _emit(args: argparse.Namespace, found: Any, seen: dict[str, float]) -> None:
    """Print the events not seen yet, one line each, and flush: a reader gets them at once."""
    for e in found:
        if e.event_id in seen:
            continue
        seen[e.event_id] = e.created_at
        if args.json:
            print(orjson.dumps(asdict(e)).decode())
        else:
            meta = orjson.dumps(e.metadata).decode()[:80]
            print(f"{iso(e.created_at)}  {e.event_type:<20}  {e.aggregate_type:<10}  "
                  f"{short_id(e.aggregate_id):<16}  {meta}")  # fmt: skip
    sys.stdout.flush()


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
