"""What the hostile-script tests share: a run's output and an actor's pause, read as the
operator sees them."""

from typing import Any

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
