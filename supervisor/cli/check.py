"""``check`` (and ``start --dry-run``) and ``alerts``: is the configuration sound, and what did
the alert outbox send.
"""

import argparse
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import orjson

from supervisor.cli.common import (
    EXIT_OK,
    EXIT_STARTUP,
    EXIT_USAGE,
    command,
    config_flag,
    config_path,
    count,
    database_flag,
    load,
    open_store_from,
    store_flags,
    table,
)
from supervisor.errors import ConfigError
from supervisor.events import short_id
from supervisor.status import iso


def add_check_commands(sub: Any) -> None:
    check = command(
        sub,
        "check",
        "validate the configuration, scripts, store and schedules; start and write nothing",
        cmd_check,
    )
    config_flag(check)
    database_flag(check)
    check.add_argument("--json", action="store_true", help="machine-readable output")

    alerts = command(sub, "alerts", "the alert outbox: sent, pending and failed alerts", cmd_alerts)
    alerts.add_argument("--status", choices=("pending", "delivered", "failed"))
    alerts.add_argument("--destination", help="only the alerts of this [[alerts]] entry")
    alerts.add_argument("--limit", type=count, default=50)
    store_flags(alerts)


def cmd_check(args: argparse.Namespace, flags: Sequence[str] = ("database",)) -> int:
    """Exit 0 when the supervisor would start; 2 on an invalid configuration, 4 on any other
    problem (a script the sandbox user cannot read, an unreachable or too new store, ...)."""
    from supervisor.check import Report, check, render

    try:
        config = load(args, *flags)
    except ConfigError as exc:
        path = config_path(args)
        report = Report(config=str(path) if path else None, problems=[str(exc)])
        print(orjson.dumps(report.as_dict()).decode() if args.json else render(report))
        return EXIT_USAGE
    report = check(config)
    print(orjson.dumps(report.as_dict()).decode() if args.json else render(report))
    return EXIT_OK if report.ok else EXIT_STARTUP


def cmd_alerts(args: argparse.Namespace) -> int:
    store = open_store_from(args, read_only=True)
    try:
        found = store.list_alerts(
            status=args.status, destination=args.destination, limit=args.limit
        )
    finally:
        store.close()
    if args.json:
        print(orjson.dumps([asdict(a) for a in found]).decode())
        return EXIT_OK
    table(
        ["CREATED", "DESTINATION", "EVENT", "ACTOR", "RUN", "COUNT", "STATUS", "ATTEMPTS",
         "DELIVERED", "LAST ERROR"],
        [[iso(a.created_at), a.destination, a.event, a.actor or "", short_id(a.run_id or ""),
          a.count, a.status, a.attempts, iso(a.delivered_at) if a.delivered_at else "",
          (a.last_error or "")[:60]] for a in found],
    )  # fmt: skip
    return EXIT_OK
