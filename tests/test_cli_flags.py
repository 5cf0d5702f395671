"""``start``'s flags come from the ``[supervisor]`` settings table, so the two cannot drift."""

import argparse

from supervisor.cli import build_parser
from supervisor.cli.run import NON_SETTING_START_FLAGS
from supervisor.settings import SETTINGS


def _start() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices["start"]
    return parser


def test_every_flag_of_start_is_a_declared_setting_or_listed_as_none() -> None:
    flags = {s for a in _start()._actions for s in a.option_strings if s.startswith("--")}
    declared = {s.flag for s in SETTINGS if s.flag}
    assert flags - {"--help", "--config"} == declared | set(NON_SETTING_START_FLAGS)


def test_a_flag_sets_its_setting_and_shows_the_table_help() -> None:
    args = _start().parse_args(["--log-level", "debug", "--no-migrate", "--http", "127.0.0.1:1"])
    assert (args.log_level, args.migrate, args.http_listen) == ("debug", False, "127.0.0.1:1")
    helps = {a.dest: a.help or "" for a in _start()._actions}
    for setting in SETTINGS:
        if setting.flag:
            assert setting.help in helps[setting.name]
            assert setting.env_var in helps[setting.name]
