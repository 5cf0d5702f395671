"""``[[alerts]]`` limits: a command's own rlimits, by the actors' key names, checked at load."""

import re

import pytest

from supervisor.alerts.config import parse_alerts
from supervisor.errors import ConfigError


def _command(**extra: object) -> dict[str, object]:
    return {"command": ["/bin/true"], "events": ["*"], **extra}


def test_a_command_takes_rlimits_by_the_actors_names_and_unlimited() -> None:
    [alert] = parse_alerts([_command(limits={"nofile": 32, "cpu_s": "unlimited"})], "", ())
    assert alert.limits == {"nofile": 32, "cpu_s": None}
    assert alert.describe()["limits"] == {"nofile": 32, "cpu_s": None}
    [plain] = parse_alerts([_command()], "", ())
    assert plain.limits == {}  # the [supervisor] limits apply as they are


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"webhook": "http://127.0.0.1/x", "events": ["*"], "limits": {"nofile": 8}},
            "alerts[0].limits: only a command takes limits",
        ),
        (_command(limits={"output_kb": 4}), "alerts[0].limits.output_kb: not a limit of a command"),
        (_command(limits={"nofile": 1}), "alerts[0].limits"),
        (_command(limits={"stack": 1}), "alerts[0].limits"),
    ],
)
def test_wrong_limits_are_refused_naming_the_key(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_alerts([entry], "", ())
