"""``actor-supervisor workflow list|run|status|items|resume|cancel`` (issue 14).

``run``, ``resume`` and ``cancel`` talk to the running supervisor; ``status`` and ``items`` read
the store (progress counts are written with every snapshot and status change); ``list`` reads
the configuration. Each takes ``--json``.
"""

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from supervisor.cli.common import (
    EXIT_OK,
    client_flags,
    command,
    connect,
    count,
    database_flag,
    load,
    open_store_from,
    print_json_or,
    resolve_id,
    store_flags,
    table,
)
from supervisor.errors import CommandRefused, ConfigError
from supervisor.events import short_id
from supervisor.status import iso
from supervisor.workflows.records import WorkflowRunRecord

PREFIX_HELP = "a workflow run id or a unique prefix (8+ chars)"


def add_workflow_commands(sub: Any) -> None:
    parser = command(sub, "workflow", "workflows: batches of items through ordered steps", _help)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = command(actions, "list", "the configured workflows", cmd_list)
    listing.add_argument("--config", type=Path, help="TOML config file")
    listing.add_argument("--json", action="store_true", help="machine-readable output")

    run = command(actions, "run", "start a workflow run over the items of a JSONL file", cmd_run)
    run.add_argument("name")
    run.add_argument("--items", required=True, help="one JSON item per line; - for stdin")
    run.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the ack")
    client_flags(run)

    status = command(actions, "status", "workflow runs and their progress", cmd_status)
    status.add_argument("workflow_run_id", nargs="?", help=PREFIX_HELP)
    status.add_argument("--workflow", help="only the runs of this workflow")
    status.add_argument("--limit", type=count, default=20)
    store_flags(status)

    items = command(actions, "items", "the items of a workflow run and their steps", cmd_items)
    items.add_argument("workflow_run_id", help=PREFIX_HELP)
    store_flags(items)

    for name, text in (("resume", "resume a paused workflow run (and its paused step actors)"),
                       ("cancel", "cancel a workflow run and its steps in flight")):  # fmt: skip
        each = command(actions, name, text, cmd_control)
        each.add_argument("workflow_run_id", help=PREFIX_HELP)
        client_flags(each)
        database_flag(each)


def _help(args: argparse.Namespace) -> int:  # argparse requires an action first
    return EXIT_OK


def read_items(source: str) -> list[Any]:
    """Items of a JSONL file (``-``: stdin); blank lines skipped. :raises ConfigError: a line
    that is not JSON, named by its number."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--items: cannot read {source}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--items: {source} is not UTF-8 ({exc.reason})") from None
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"--items: {source} line {number}: not valid JSON: {exc}") from None
    if not items:
        raise ConfigError(f"--items: {source} holds no items")
    return items


def cmd_list(args: argparse.Namespace) -> int:
    config = load(args)
    found = [w.as_dict() for w in config.workflows.values()]
    if args.json:
        print(orjson.dumps(found).decode())
        return EXIT_OK
    table(
        ["WORKFLOW", "STEPS", "CHUNK", "PARALLEL", "ON FAILURE", "SCHEDULE"],
        [[w["name"], " -> ".join(w["steps"]), w["chunk_size"], w["max_parallel"] or "pool",
          w["on_item_failure"], orjson.dumps(w["schedule"]).decode() if w["schedule"] else ""]
         for w in found],
    )  # fmt: skip
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    items = read_items(args.items)
    with connect(args, timeout_s=args.timeout) as client:
        data = client.run_workflow(args.name, items)
    text = (
        f"accepted: workflow run {data['workflow_run_id']} of {data['workflow']}, "
        f"{data['items']} items in {data['waves']} waves"
    )
    print_json_or(args, data, text)
    return EXIT_OK


def cmd_control(args: argparse.Namespace) -> int:
    run_id = resolve_id(args, "workflow_run", args.workflow_run_id)
    with connect(args) as client:
        data = client.workflow(args.action, run_id)
    print_json_or(args, data, f"workflow run {data['workflow_run_id']}: {data['status']}")
    return EXIT_OK


def progress(run: WorkflowRunRecord) -> dict[str, Any]:
    """A workflow run's row as ``status`` shows it: done, failed, total, current wave."""
    return {
        "workflow_run_id": run.workflow_run_id, "workflow": run.workflow, "status": run.status,
        "items": run.item_count, "succeeded": run.succeeded, "failed": run.failed,
        "done": run.succeeded + run.failed, "wave": run.wave, "waves": run.waves,
        "steps": run.steps, "chunk_size": run.chunk_size, "paused_reason": run.paused_reason,
        "created_at": iso(run.created_at), "finished_at": iso(run.finished_at),
        "duration_s": None if run.finished_at is None else
        round(run.finished_at - run.created_at, 3),
    }  # fmt: skip


def cmd_status(args: argparse.Namespace) -> int:
    store = open_store_from(args, read_only=True)
    try:
        if args.workflow_run_id is None:
            runs = store.workflow_runs(workflow=args.workflow, limit=args.limit)
        else:
            one = store.workflow_run(store.resolve_id("workflow_run", args.workflow_run_id))
            if one is None:  # resolved a moment ago: only a prune removes a run
                raise CommandRefused("unknown_id", f"workflow run {args.workflow_run_id} is gone")
            runs = [one]
    finally:
        store.close()
    found = [progress(r) for r in runs]
    if args.json:
        print(orjson.dumps(found).decode())
        return EXIT_OK
    table(
        ["RUN", "WORKFLOW", "STATUS", "DONE", "FAILED", "TOTAL", "WAVE", "CREATED"],
        [[short_id(p["workflow_run_id"]), p["workflow"], p["status"], p["done"], p["failed"],
          p["items"], f"{min(p['wave'] + 1, p['waves'])}/{p['waves']}", p["created_at"]]
         for p in found],
    )  # fmt: skip
    return EXIT_OK


def cmd_items(args: argparse.Namespace) -> int:
    store = open_store_from(args, read_only=True)
    try:
        run_id = store.resolve_id("workflow_run", args.workflow_run_id)
        items = store.workflow_items(run_id)
        steps = store.workflow_steps(run_id)
        own = store.list_events(aggregate_type="workflow_run", aggregate_id=run_id, limit=10**7)
    finally:
        store.close()
    ended = {
        e.metadata["item"]: e for e in own if e.event_type in ("item_succeeded", "item_failed")
    }
    by_item: dict[str, list[dict[str, Any]]] = {}
    for step in steps:
        by_item.setdefault(step["item_id"], []).append(step)
    found = []
    for item in items:
        end = ended.get(item.item_id)
        rows = by_item.get(item.item_id, [])
        status = "pending" if not rows else "running"
        if end is not None:
            status = "succeeded" if end.event_type == "item_succeeded" else "failed"
        found.append({
            "item_id": item.item_id, "position": item.position, "status": status,
            "error": end.metadata.get("error") if end is not None else None,
            "steps": rows,
        })  # fmt: skip
    if args.json:
        print(orjson.dumps(found).decode())
        return EXIT_OK
    table(
        ["ITEM", "STATUS", "STEPS", "LAST STEP", "LAST STATUS", "ERROR"],
        [[f["item_id"][:24], f["status"], len(f["steps"]), *_last(f["steps"]),
          (f["error"] or "")[:60]] for f in found],
    )  # fmt: skip
    return EXIT_OK


def _last(steps: list[dict[str, Any]]) -> list[Any]:
    return [steps[-1]["step"], steps[-1]["status"]] if steps else ["", ""]
