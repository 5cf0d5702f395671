"""What every command shares: exit codes, common flags, loading the configuration, clients,
opening the store and printing tables.

Settings resolve as: flag, then ``ACTOR_SUPERVISOR_<NAME>`` environment variable, then the
config file, then the default. The config file is ``--config``, else
``$ACTOR_SUPERVISOR_CONFIG``, else ``./supervisor.toml`` when it exists.
"""

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from protocol.client import Client, ClientTimeout, RunOutcome
from supervisor.config import Config, load_config
from supervisor.controlkeys import client_for, control_endpoint
from supervisor.store import open_store, pool_options
from supervisor.store.base import StoreError
from supervisor.store.urls import parse_store_url

EXIT_OK = 0
EXIT_RUN_FAILED = 1  # submit --wait: the run did not succeed
EXIT_USAGE = 2  # bad flags or configuration (argparse uses 2 as well)
EXIT_UNREACHABLE = 3  # no answer from the supervisor in time
EXIT_STARTUP = 4  # the supervisor could not start, or the store could not be opened
EXIT_REFUSED = 5  # the supervisor (or a code command) refused: unknown actor, busy, ...


def count(text: str) -> int:
    """An argparse type for ``--limit``: a whole number >= 1 (-1 or 0 ended in a traceback or
    an empty answer that looked like 'nothing recorded')."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def command(
    sub: Any, name: str, help_text: str, handler: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=handler)
    return parser


def config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="TOML config file [ACTOR_SUPERVISOR_CONFIG, ./supervisor.toml]"
    )


def database_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database", help="sqlite:PATH or postgresql://... [ACTOR_SUPERVISOR_DATABASE]"
    )


def control_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--control", help="control endpoint [ACTOR_SUPERVISOR_CONTROL]")


def client_flags(parser: argparse.ArgumentParser) -> None:
    config_flag(parser)
    control_flag(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def store_flags(parser: argparse.ArgumentParser) -> None:
    config_flag(parser)
    database_flag(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def config_path(args: argparse.Namespace) -> Path | None:
    if args.config is not None:
        return Path(args.config)
    if env := os.environ.get("ACTOR_SUPERVISOR_CONFIG"):
        return Path(env)
    default = Path("supervisor.toml")
    return default if default.is_file() else None


def load(args: argparse.Namespace, *flags: str) -> Config:
    overrides = {name: getattr(args, name, None) for name in flags}
    return load_config(config_path(args), overrides=overrides, environ=os.environ)


def connect(args: argparse.Namespace, timeout_s: float = 10.0) -> Client:
    return client_for(load(args, "control"), timeout_s=timeout_s)


def endpoint_origin(config: Config) -> str:
    """``ENDPOINT (from WHERE)``: which control endpoint a command tried, and which of flag,
    environment variable, config file or default chose it, for a message about silence."""
    return f"{control_endpoint(config)} (control from {_origin_text(config, 'control')})"


def _origin_text(config: Config, name: str) -> str:
    source, label = config.sources.get(name, "default"), config.origins.get(name, "default")
    if source == "flag":
        return f"the {label} flag"
    if source == "environment":
        return f"the environment variable {label}"
    if source == "file":
        return f"the config file, {label}"
    where = f"the config file {config.path} does not set it" if config.path else "no config file"
    return f"the default; {where}"


def unreachable(config: Config, timeout_s: float, why: str | None = None) -> ClientTimeout:
    """The error for a control endpoint that did not answer: what was tried, and why there."""
    silence = why or f"no answer within {timeout_s:g}s"
    return ClientTimeout(
        f"no supervisor at {endpoint_origin(config)}: {silence}; is one running with this "
        "configuration? (--config, --control or ACTOR_SUPERVISOR_CONTROL)"
    )


def ask(config: Config, timeout_s: float, request: Callable[[Client], Any]) -> Any:
    """``request(client)`` against the supervisor ``config`` names; silence (or no socket
    file, said at once) raises :func:`unreachable`, naming the endpoint and its source."""
    endpoint = control_endpoint(config)
    if endpoint.startswith("ipc://") and not os.path.exists(endpoint[len("ipc://") :]):
        raise unreachable(config, timeout_s, why="no socket file there")
    try:
        with client_for(config, timeout_s=timeout_s) as client:
            return request(client)
    except ClientTimeout:
        raise unreachable(config, timeout_s) from None


def open_store_from(
    args: argparse.Namespace,
    config: Config | None = None,
    *,
    read_only: bool = False,
    create: bool = False,
) -> Any:
    """The store ``--database`` (or the configuration) names; ``config``: already loaded.

    Only ``create`` (``migrate``) may make a new database: for any other command a missing
    SQLite file means a wrong ``--config`` or ``--database``, and creating it (and its folder)
    would only hide that. ``read_only`` opens it so that the command cannot write.

    :raises StoreError: no database there, or one without actor-supervisor's tables.
    """
    settings = (config := config or load(args, "database")).supervisor
    # A command waits a little for a database that is starting, not the supervisor's minute.
    pool = replace(pool_options(settings), wait_s=min(settings.database_wait_s, 10.0))
    parsed = parse_store_url(settings.database, base_dir=config.base_dir)
    if not create and parsed.path is not None and not parsed.path.is_file():
        raise StoreError(f"no database at {parsed.path} ({_wrong(config)})")
    try:
        store = open_store(
            settings.database, base_dir=config.base_dir, pool=pool, read_only=read_only
        )
    except StoreError as exc:
        if create or not _missing(exc):
            raise
        raise StoreError(f"no database {parsed.description} ({_wrong(config)}): {exc}") from exc
    if not create:
        _require_schema(store, config)
    return store


def _require_schema(store: Any, config: Config) -> None:
    """A database without the supervisor's tables is not one it ever wrote: say so, not
    'no such table: runs' halfway through a command."""
    try:
        store.load_actors()
    except StoreError as exc:
        if not _missing(exc):
            raise
        store.close()
        raise StoreError(
            f"{store.description} has no actor-supervisor tables ({_wrong(config)}; "
            "`actor-supervisor migrate` creates them)"
        ) from exc


def _missing(exc: StoreError) -> bool:
    text = str(exc)
    return "does not exist" in text or "no such table" in text


def _wrong(config: Config) -> str:
    chosen = _origin_text(config, "database")
    return f"wrong --config or --database? database from {chosen}"


def print_json_or(args: argparse.Namespace, data: Any, text: str) -> None:
    print(orjson.dumps(data).decode() if args.json else text)


def table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def resolve_id(args: argparse.Namespace, kind: str, text: str) -> str:
    """``text``, a whole id or a unique prefix of one, made whole by the store
    (``Store.resolve_id``, which also words the errors); the store is closed again at once."""
    store = open_store_from(args, read_only=True)
    try:
        found: str = store.resolve_id(kind, text)
    finally:
        store.close()
    return found


def print_outcome(args: argparse.Namespace, outcome: RunOutcome, **extra: Any) -> None:
    if args.json:
        print(orjson.dumps({**outcome.as_dict(), **extra}).decode())
        return
    took = f" in {outcome.duration_ms:.1f} ms" if outcome.duration_ms is not None else ""
    line = f"run {outcome.run_id} ({outcome.actor}) {outcome.status}{took}"
    if outcome.attempts > 1:
        line += f" after {outcome.attempts} attempts"
    if outcome.reason:
        line += f": {outcome.reason}" + (f" ({outcome.error})" if outcome.error else "")
    print(line)
    if outcome.output is not None:
        print(orjson.dumps(outcome.output, option=orjson.OPT_INDENT_2).decode())
    if not outcome.succeeded and outcome.stderr_tail:
        print("--- stderr (tail) ---\n" + outcome.stderr_tail.rstrip(), file=sys.stderr)
