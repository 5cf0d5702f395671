"""What every command shares: exit codes, common flags, loading the configuration, clients,
opening the store and printing tables.

Settings resolve as: flag, then ``ACTOR_SUPERVISOR_<NAME>`` environment variable, then the
config file, then the default. The config file is ``--config``, else
``$ACTOR_SUPERVISOR_CONFIG``, else ``./supervisor.toml`` when it exists.
"""

import argparse
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from protocol.client import Client
from supervisor.config import Config, load_config
from supervisor.controlkeys import client_for
from supervisor.store import open_store, pool_options

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


def open_store_from(args: argparse.Namespace, config: Config | None = None) -> Any:
    """The store ``--database`` (or the configuration) names; ``config``: already loaded."""
    settings = (config := config or load(args, "database")).supervisor
    # A command waits a little for a database that is starting, not the supervisor's minute.
    pool = replace(pool_options(settings), wait_s=min(settings.database_wait_s, 10.0))
    return open_store(settings.database, base_dir=config.base_dir, pool=pool)


def print_json_or(args: argparse.Namespace, data: Any, text: str) -> None:
    print(orjson.dumps(data).decode() if args.json else text)


def table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
