"""The README is the contract users read first: its commands, settings and keys must be real."""

import re
from pathlib import Path

from supervisor.config import ACTOR_KEYS
from supervisor.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _code_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.S)


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second() -> None:
    run_examples, run_tests = _code_blocks()[:2]
    assert "actor-supervisor start --config examples/supervisor.toml" in run_examples
    assert run_examples.startswith("python3 -m venv .venv && .venv/bin/pip install .")
    assert "pytest" in run_tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert run_tests.strip() in ci


def test_every_setting_and_actor_key_is_documented() -> None:
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in README]
    missing += [k.name for k in ACTOR_KEYS if f"`{k.name}`" not in README]
    assert not missing, f"README does not document: {missing}"


def test_every_subcommand_is_documented() -> None:
    from supervisor.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    missing = [name for name in sub.choices if f"`{name}" not in README]
    assert not missing, f"README does not document: {missing}"
