"""The commands about one run: ``show`` (its whole story, read from the store), ``rerun`` and
``cancel`` (asked of the running supervisor).

Every run id given here may be a unique prefix of at least 8 characters: the store resolves it
(:meth:`~supervisor.store.base.Store.resolve_id`), as it does for the HTTP API.
"""

import argparse
import sys
from typing import Any

import orjson

from protocol.client import Accepted, ClientError
from supervisor.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_RUN_FAILED,
    client_flags,
    command,
    connect,
    database_flag,
    open_store_from,
    print_outcome,
    resolve_id,
    store_flags,
    table,
)
from supervisor.errors import CommandRefused
from supervisor.events import short_id
from supervisor.runview import run_document
from supervisor.status import iso

ERROR_CHARS = 2000  # of an attempt's error text in `show`'s text mode (--json has it all)
CANCEL_TIMEOUT_S = 60.0  # a running run gets TERM, kill_grace_s, then KILL: its result follows


def add_runs_commands(sub: Any) -> None:
    show = command(sub, "show", "one run: every attempt, output, stderr and events", cmd_show)
    show.add_argument("run_id", metavar="RUN_ID", help="a run id or a unique prefix (8+ chars)")
    store_flags(show)

    rerun = command(
        sub, "rerun", "run a recorded run's actor again, with the same input", cmd_rerun
    )
    rerun.add_argument("run_id", metavar="RUN_ID", help="a run id or a unique prefix (8+ chars)")
    rerun.add_argument("--wait", action="store_true", help="wait for the new run's outcome")
    rerun.add_argument("--timeout", type=float, help="seconds to wait (default 600 with --wait)")
    client_flags(rerun)
    database_flag(rerun)

    cancel = command(
        sub, "cancel", "cancel a queued run, or kill a running one; wait for its outcome",
        cmd_cancel,
    )  # fmt: skip
    cancel.add_argument("run_id", metavar="RUN_ID", help="a run id or a unique prefix (8+ chars)")
    cancel.add_argument(
        "--timeout", type=float, default=CANCEL_TIMEOUT_S, help="seconds to wait for the outcome"
    )
    client_flags(cancel)
    database_flag(cancel)


# --- show ----------------------------------------------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    store = open_store_from(args, read_only=True)
    try:
        run_id = store.resolve_id("run", args.run_id)
        document = run_document(store, run_id)
    finally:
        store.close()
    if document is None:  # resolved a moment ago
        raise CommandRefused("unknown_id", f"no run {run_id} recorded")
    if args.json:
        print(orjson.dumps(document).decode())
    else:
        print_run(document)
    return EXIT_OK


def print_run(doc: dict[str, Any]) -> None:
    """The document of :func:`~supervisor.runview.run_document`, for a person."""
    status = doc["status"] + (f" ({doc['reason']})" if doc["reason"] else "")
    print(f"run {doc['run_id']}  actor {doc['actor']}  {status}")
    facts = [f"trigger {doc['trigger']}", f"queued {iso(doc['queued_at'])}"]
    if doc["finished_at"] is not None:
        facts.append(f"finished {iso(doc['finished_at'])}")
    print("  " + "  ".join(facts))
    if doc["rerun_of"]:
        print(f"  rerun of {doc['rerun_of']}")
    for rerun in doc["reruns"]:
        print(f"  rerun as {rerun}")
    print(f"  input  {_json(doc['input'])}")
    for attempt in doc["attempts"]:
        _print_attempt(attempt)
    print()
    if doc["output"] is not None:
        print("output:")
        print(_indented(orjson.dumps(doc["output"], option=orjson.OPT_INDENT_2).decode()))
    if doc["stderr_tail"]:
        print("stderr (tail):")
        print(_indented(doc["stderr_tail"].rstrip()))
    print("events:")
    table(
        ["CREATED", "TYPE", "EVENT", "METADATA"],
        [[iso(e["created_at"]), e["event_type"], short_id(e["event_id"]),
          orjson.dumps(_short_metadata(e["metadata"])).decode()[:100]]
         for e in doc["events"]],
    )  # fmt: skip


def _print_attempt(a: dict[str, Any]) -> None:
    status = a["status"] + (f" ({a['reason']})" if a["reason"] else "")
    took = f"{a['duration_ms']:.1f} ms" if a["duration_ms"] is not None else "-"
    exit_text = "-" if a["exit_code"] is None else str(a["exit_code"])
    if a["signal"]:
        exit_text += f", signal {a['signal']}"
    print(f"\nattempt {a['attempt']}  {status}  exit {exit_text}  {took}  ({a['trigger']})")
    print(
        f"  queued {iso(a['queued_at']) or '-'}  started {iso(a['started_at']) or '-'}  "
        f"finished {iso(a['finished_at']) or '-'}"
    )
    code = (a["code_sha256"] or "-")[:12]
    if a["code_history_id"]:
        tag = f"version {a['code_version']}, " if a["code_version"] else ""
        code += f" ({tag}history {a['code_history_id']}, {a['code_source']})"
    print(f"  worker {a['worker_id'] or '-'}  code {code}")
    if a["error"]:
        error = a["error"] if len(a["error"]) <= ERROR_CHARS else a["error"][:ERROR_CHARS] + "..."
        print("  error  " + error.replace("\n", "\n         "))


def _short_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """What an event adds to the run's own facts (the actor and correlation id repeat them)."""
    return {k: v for k, v in metadata.items() if k not in ("actor", "correlation_id") and v}


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _indented(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


# --- rerun, cancel ---------------------------------------------------------------------------


def cmd_rerun(args: argparse.Namespace) -> int:
    run_id = resolve_id(args, "run", args.run_id)
    timeout = args.timeout if args.timeout is not None else (600.0 if args.wait else 10.0)
    with connect(args, timeout_s=timeout) as client:
        answer = client.rerun(run_id, wait=args.wait)
    if isinstance(answer, Accepted):
        data = {"run_id": answer.run_id, "actor": answer.actor, "rerun_of": run_id}
        text = f"accepted: run {answer.run_id} ({answer.actor}), a rerun of {run_id}"
        print(orjson.dumps(data).decode() if args.json else text)
        return EXIT_OK
    print_outcome(args, answer, rerun_of=run_id)
    return EXIT_OK if answer.succeeded else EXIT_RUN_FAILED


def cmd_cancel(args: argparse.Namespace) -> int:
    """Exit 0 once the run is recorded ``cancelled``; 1 if it ended otherwise first (it is then
    not retried); refused (5) for a run that has already finished."""
    run_id = resolve_id(args, "run", args.run_id)
    with connect(args, timeout_s=args.timeout) as client:
        try:
            outcome = client.cancel(run_id)
        except ClientError as exc:
            if exc.code != "not_cancellable":
                raise
            return _refused(args, run_id, exc.message)
    print_outcome(args, outcome)
    return EXIT_OK if outcome.status == "cancelled" else EXIT_RUN_FAILED


def _refused(args: argparse.Namespace, run_id: str, why: str) -> int:
    """A finished run: say how it ended (from the store) rather than the supervisor's words."""
    store = open_store_from(args, read_only=True)
    try:
        last = store.list_runs(run_id=run_id, limit=1)
    finally:
        store.close()
    if last and last[0].is_final:
        r = last[0]
        why = (
            f"run {run_id} has already finished: {r.status}"
            + (f" ({r.reason})" if r.reason else "")
            + f" at {iso(r.finished_at)}; nothing to cancel"
        )
    if args.json:
        print(orjson.dumps({"error": "not_cancellable", "message": why}).decode())
    else:
        print(f"actor-supervisor: not_cancellable: {why}", file=sys.stderr)
    return EXIT_REFUSED
