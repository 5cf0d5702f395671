"""Every configuration value that passes validation works at runtime (issue 9): durations are
capped at 7 days, intervals below 1 s need allow_subsecond, and a pool too big for the host's
memory gets a warning with the estimate. Each refusal names file, key, bound and value."""

from pathlib import Path

import pytest

from supervisor.budget import check_pool_memory, pool_estimate_mb
from supervisor.config import load_config
from supervisor.errors import ConfigError
from supervisor.settings import SupervisorSettings

ACTOR = """
[[actors]]
name = "job"
script = "job.py"
"""


def config(tmp_path: Path, supervisor: str = "", actor: str = "") -> Path:
    (tmp_path / "job.py").write_text("print('{}')\n")
    path = tmp_path / "supervisor.toml"
    path.write_text(f"[supervisor]\n{supervisor}\n{ACTOR}{actor}\n")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    return str(info.value)


@pytest.mark.parametrize("key", ["shutdown_grace_s", "kill_grace_s", "heartbeat_timeout_s"])
def test_supervisor_durations_are_capped_at_seven_days(tmp_path: Path, key: str) -> None:
    path = config(tmp_path, supervisor=f"{key} = 1e308")
    message = error_of(path)
    assert message == f"{path}: supervisor.{key}: must be <= 604800 (7 days), got 1e+308"
    ok = config(tmp_path, supervisor=f"{key} = 604800")
    assert getattr(load_config(ok, environ={}).supervisor, key) == 604800.0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("timeout_s", "2592000"),  # 30 days: epoll's timeout overflows near 24.8
        ("retry_backoff_s", "1e300"),
        ("retry_backoff_max_s", "1e300"),
        ("breaker_cooldown_s", "604801"),
    ],
)
def test_actor_durations_are_capped_at_seven_days(tmp_path: Path, key: str, value: str) -> None:
    path = config(tmp_path, actor=f"{key} = {value}")
    message = error_of(path)
    assert message.startswith(f"{path}: actors[0] (job).{key}: must be <= 604800 (7 days), got ")


def test_environment_values_are_bounded_too(tmp_path: Path) -> None:
    path = config(tmp_path)
    with pytest.raises(ConfigError, match=r"KILL_GRACE_S.*must be <= 604800 \(7 days\)"):
        load_config(path, environ={"ACTOR_SUPERVISOR_KILL_GRACE_S": "1e308"})


def test_intervals_below_one_second_need_allow_subsecond(tmp_path: Path) -> None:
    fast = 'schedule = { type = "interval", seconds = 0.000001 }'
    path = config(tmp_path, actor=fast)
    assert error_of(path) == (
        f"{path}: actors[0] (job).schedule.seconds: must be >= 1 (set allow_subsecond = true "
        "in [supervisor] for shorter intervals), got 1e-06"
    )
    path = config(tmp_path, supervisor="allow_subsecond = true", actor=fast)
    assert "must be >= 0.01, got 1e-06" in error_of(path)
    half = 'schedule = { type = "interval", seconds = 0.5 }'
    path = config(tmp_path, supervisor="allow_subsecond = true", actor=half)
    assert load_config(path, environ={}).actors["job"].schedule is not None
    path = config(tmp_path, actor='schedule = { type = "interval", seconds = 1 }')
    assert load_config(path, environ={}).actors["job"].schedule is not None


def test_a_pool_too_big_for_the_host_gets_a_warning_with_the_estimate() -> None:
    big = SupervisorSettings(workers=1024, concurrency=4)
    warning = check_pool_memory(big, available_mb=16_000)
    assert warning is not None
    assert f"about {pool_estimate_mb(1024, 4)} MB" in warning and "16000 MB available" in warning
    assert check_pool_memory(SupervisorSettings(workers=4), available_mb=16_000) is None
    assert check_pool_memory(SupervisorSettings(workers=2)) is None  # this host, real figures
