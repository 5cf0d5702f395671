"""What the hostile-script tests share: a run's output and an actor's pause, read as the
operator sees them."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from protocol.outcomes import RunOutcome
from tests.supervisor.harness import RunningSupervisor


def output_of(outcome: Any) -> dict[str, Any]:
    """The output of an attack script's run, which must have succeeded (it reports what it
    tried)."""
    assert isinstance(outcome, RunOutcome), outcome
    assert outcome.succeeded, (outcome.reason, outcome.error, outcome.stderr_tail)
    data: dict[str, Any] = outcome.output
    return data


def is_paused(sup: RunningSupervisor, actor: str) -> bool:
    return bool(next(a for a in sup.status()["actors"] if a["name"] == actor)["paused"])


def check_report(config: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """What ``actor-supervisor check --json`` says of ``config``, run from its folder."""
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "check", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=120, cwd=config.parent,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    report: dict[str, Any] = orjson.loads(done.stdout)
    return report
