"""``prune``: delete finished runs and their events past a cut-off, now (``retention_days`` does
the same from the supervisor's writer). What goes and what stays: :mod:`supervisor.store.prune`.
"""

import argparse
import re
import time
from dataclasses import asdict
from typing import Any

from supervisor.cli.common import EXIT_OK, command, open_store_from, print_json_or, store_flags
from supervisor.errors import ConfigError
from supervisor.retention import BATCH_RUNS, DAY_S
from supervisor.store.base import Pruned

_UNITS = {"m": 60.0, "h": 3600.0, "d": DAY_S, "w": 7 * DAY_S}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
MIN_AGE_S = DAY_S  # retries and the idempotency window (24 h) look back this far


def duration(text: str) -> float:
    """An argparse type: ``30d``, ``12h``, ``2w``, ``90m`` -> seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 30d, 12h, 2w or 90m, got {text!r}"
        )
    return float(match[1]) * _UNITS[match[2]]


def add_prune_command(sub: Any) -> None:
    prune = command(
        sub,
        "prune",
        "delete finished runs (every attempt) and their events older than a cut-off; code "
        "history, actors' state, runs in flight and undelivered alerts are never touched",
        cmd_prune,
    )
    prune.add_argument(
        "--older-than", type=duration, required=True, help="the cut-off age, e.g. 30d (>= 1d)"
    )
    prune.add_argument(
        "--keep-failed",
        type=duration,
        help="keep runs that failed this long instead, e.g. 90d (default: as --older-than)",
    )
    prune.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
    store_flags(prune)


def cmd_prune(args: argparse.Namespace) -> int:
    if args.older_than < MIN_AGE_S:
        raise ConfigError(
            f"--older-than: at least 1d (retries and the idempotency window look back that "
            f"far), got {args.older_than / 3600:g}h"
        )
    keep_failed = max(args.keep_failed or 0.0, args.older_than)
    now = time.time()
    cutoffs = {"cutoff": now - args.older_than, "failed_cutoff": now - keep_failed}
    store = open_store_from(args, read_only=args.dry_run)
    try:
        if args.dry_run:
            pruned = store.count_prunable(**cutoffs)
        else:
            pruned = Pruned()
            while done := store.prune(**cutoffs, limit=BATCH_RUNS):  # one transaction each
                pruned += done
    finally:
        store.close()
    data = {
        **asdict(pruned),
        "dry_run": args.dry_run,
        "older_than_days": args.older_than / DAY_S,
        "keep_failed_days": keep_failed / DAY_S,
        "database": store.description,
    }
    verb = "would delete" if args.dry_run else "deleted"
    print_json_or(
        args,
        data,
        f"{verb} {pruned.runs} run(s) ({pruned.attempts} attempt(s), {pruned.events} event(s)) "
        f"and {pruned.alerts} sent or failed alert(s) from {store.description}",
    )
    return EXIT_OK
