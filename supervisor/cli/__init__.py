"""The ``actor-supervisor`` command: ``start`` runs the supervisor in the foreground; the others
talk to a running one over its control endpoint (:mod:`~supervisor.cli.run`), work on the
store directly (:mod:`~supervisor.cli.read`, the code commands of :mod:`~supervisor.cli.code`),
look at one run or rerun or cancel it (:mod:`~supervisor.cli.runs`),
or check the configuration and the alert outbox (:mod:`~supervisor.cli.check`). Shared flags,
exit codes and helpers: :mod:`~supervisor.cli.common`.
"""

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import orjson

from protocol.client import ClientError, ClientTimeout
from supervisor.cli.check import add_check_commands
from supervisor.cli.code import add_code_commands
from supervisor.cli.common import EXIT_REFUSED, EXIT_STARTUP, EXIT_UNREACHABLE, EXIT_USAGE
from supervisor.cli.config_show import add_config_commands
from supervisor.cli.prune import add_prune_command
from supervisor.cli.read import add_read_commands
from supervisor.cli.run import add_run_commands
from supervisor.cli.runs import add_runs_commands
from supervisor.cli.terminal import guard_terminals
from supervisor.cli.workflow import add_workflow_commands
from supervisor.errors import CommandRefused, ConfigError, StartupError
from supervisor.store.base import StoreError, StoreUnavailable

EPILOG = """examples:
  actor-supervisor start --config examples/supervisor.toml --workers 8
  actor-supervisor submit greeter --input '{"name": "Ada"}' --wait --config examples/supervisor.toml
  actor-supervisor status --config examples/supervisor.toml
  actor-supervisor history heartbeat --limit 5 --config examples/supervisor.toml
  actor-supervisor deploy greeter --changelog "friendlier" --config examples/supervisor.toml
  actor-supervisor rollback greeter --to-version 1.0.0 --config examples/supervisor.toml
"""

# the exit code of each failure a command reports, first match wins (ClientTimeout is a ClientError)
_EXIT_CODES: tuple[tuple[type[Exception] | tuple[type[Exception], ...], int], ...] = (
    (ConfigError, EXIT_USAGE),
    (CommandRefused, EXIT_REFUSED),
    ((StartupError, StoreError), EXIT_STARTUP),
    (ClientTimeout, EXIT_UNREACHABLE),
    (ClientError, EXIT_REFUSED),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actor-supervisor",
        description="Run script actors on schedules and on demand, sandboxed and recorded.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_commands(sub)  # start, submit, trigger, pause, resume, status
    add_check_commands(sub)  # check, alerts
    add_read_commands(sub)  # history, events, migrate
    add_code_commands(sub)  # drift, deploy, versions, rollback, show-code
    add_runs_commands(sub)  # show, rerun, cancel
    add_config_commands(sub)  # config show
    add_prune_command(sub)  # prune
    add_workflow_commands(sub)  # workflow list|run|status|items|resume|cancel
    return parser


def _version() -> str:
    try:
        return version("actor-supervisor")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    guard_terminals()  # a script's text must not drive the operator's terminal
    try:
        code = _run(argv)
        sys.stdout.flush()  # here, not at exit: a reader that went away is noticed below
        return code
    except BrokenPipeError:
        # The reader went away (``| head``): what is left has nowhere to go, and Python's own
        # flush at exit must not complain about it either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a process killed by SIGPIPE


def _run(argv: Sequence[str] | None) -> int:
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    try:
        code: int = args.handler(args)
        return code
    except (ConfigError, CommandRefused, StartupError, StoreError, ClientError) as exc:
        # a timeout's text is the message alone: its code ("timeout") would only repeat it
        message = exc.message if isinstance(exc, ClientTimeout) else str(exc)
        exit_code = next(code for kind, code in _EXIT_CODES if isinstance(exc, kind))
        if getattr(args, "json", False):
            # --json promises JSON on stdout, failures included; the exit code is the same
            code_word = error_code(exc)
            text = str(exc).removeprefix(f"{code_word}: ")  # the code is a field of its own
            error = {"code": code_word, "message": text, "exit": exit_code}
            print(orjson.dumps({"error": error}).decode())
        else:
            print(f"actor-supervisor: {message}", file=sys.stderr)
        return exit_code
    except KeyboardInterrupt:
        return 130


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; with ``--json``, a usage error is a JSON error object too."""
    if "--json" not in argv:
        return build_parser().parse_args(argv)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code != EXIT_USAGE:  # --help, --version: not an error
            sys.stderr.write(captured.getvalue())
            raise
        message = captured.getvalue().strip().splitlines()[-1]  # "prog cmd: error: ..."
        error = {"code": "usage", "message": message.partition("error: ")[2], "exit": EXIT_USAGE}
        print(orjson.dumps({"error": error}).decode())
        raise


def error_code(exc: Exception) -> str:
    """The stable code of a failure: the supervisor's or a refusal's own, else its kind."""
    if isinstance(exc, (ClientError, CommandRefused)):
        return exc.code
    if isinstance(exc, ConfigError):
        return "config_error"
    if isinstance(exc, StartupError):
        return "startup_error"
    return "store_unavailable" if isinstance(exc, StoreUnavailable) else "store_error"
