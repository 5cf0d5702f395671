"""Loading the TOML configuration: resolution, precedence and the errors users see."""

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from protocol.messages import Limits
from supervisor.config import (
    SETTINGS,
    ConfigError,
    SupervisorSettings,
    load_config,
)
from supervisor.schedule import CronSchedule, IntervalSchedule, OnceSchedule
from supervisor.settings import DEFAULT_ENV_ALLOW
from workers.preload import DEFAULT_PRELOAD

EXAMPLE = """
[supervisor]
workers = 2                  # worker processes; --workers overrides
concurrency = 1              # runs in flight per worker
mode = "fork"                # default sandbox mode: fork | exec
database = "sqlite:state/actor-supervisor.db"  # relative to the config file; or postgresql://...
shutdown_grace_s = 10

[[actors]]
name = "heartbeat"
script = "scripts/heartbeat.py"           # relative to the config file
schedule = { type = "cron", expression = "*/10 * * * * *" }   # optional: on demand only
timezone = "Europe/Berlin"                # optional, default UTC
mode = "exec"                             # optional, overrides the default
timeout_s = 30
input = { greeting = "hi" }               # the JSON document a scheduled run gets on stdin
env = { LOG_LEVEL = "info" }              # added to the allow-listed environment
limits = { cpu_s = 10, memory_mb = 256, nofile = 64, nproc = 32, fsize_mb = 10, output_kb = 1024 }
"""

ACTOR = """
[[actors]]
name = "job"
script = "scripts/job.py"
"""


def write(tmp_path: Path, text: str, *scripts: str) -> Path:
    """A config file plus the script files it names (``scripts/<name>``)."""
    for script in ("heartbeat.py", "job.py", *scripts):
        (tmp_path / "scripts").mkdir(exist_ok=True)
        (tmp_path / "scripts" / script).write_text("print('{}')\n")
    path = tmp_path / "supervisor.toml"
    path.write_text(text)
    return path


def error_of(path: Path | None, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=kwargs.pop("environ", {}), **kwargs)
    return str(info.value)


# --- what a valid file gives ------------------------------------------------------------------


def test_the_documented_example_loads_with_every_field_resolved(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    config = load_config(path, environ={})
    assert config.path == path and config.base_dir == tmp_path
    assert config.supervisor == SupervisorSettings(shutdown_grace_s=10.0)
    actor = config.actors["heartbeat"]
    assert actor.script == tmp_path / "scripts" / "heartbeat.py" and actor.script.is_absolute()
    assert actor.schedule == CronSchedule("*/10 * * * * *", "Europe/Berlin")
    assert actor.timezone == "Europe/Berlin"
    assert actor.mode == "exec"
    assert actor.timeout_s == 30.0 and isinstance(actor.timeout_s, float)
    assert actor.input == {"greeting": "hi"}
    assert actor.env == {"LOG_LEVEL": "info"}
    assert actor.limits == Limits(
        cpu_s=10, memory_mb=256, nofile=64, nproc=32, fsize_mb=10, output_kb=1024, stderr_kb=8
    )
    assert (actor.max_retries, actor.retry_backoff_s, actor.retry_backoff_max_s) == (3, 2.0, 300.0)
    assert actor.retry_jitter is True and actor.breaker_cooldown_s is None
    assert actor.max_consecutive_failures == 5
    assert (actor.catch_up, actor.catch_up_max, actor.overlap) == ("once", 100, "skip")


def test_actor_defaults_come_from_the_supervisor_and_limits_merge_key_by_key(
    tmp_path: Path,
) -> None:
    text = """
[supervisor]
mode = "exec"
max_consecutive_failures = 9
limits = { cpu_s = 20, nofile = 128 }

[[actors]]
name = "job"
script = "scripts/job.py"
limits = { nofile = 32, memory_mb = "unlimited" }

[[actors]]
name = "other"
script = "scripts/job.py"
mode = "fork"
max_consecutive_failures = 0
"""
    config = load_config(write(tmp_path, text), environ={})
    defaults = Limits()
    assert config.supervisor.limits == dataclasses.replace(defaults, cpu_s=20, nofile=128)
    job, other = config.actors["job"], config.actors["other"]
    assert job.limits == dataclasses.replace(defaults, cpu_s=20, nofile=32, memory_mb=None)
    assert other.limits == config.supervisor.limits
    assert (job.mode, other.mode) == ("exec", "fork")
    assert (job.max_consecutive_failures, other.max_consecutive_failures) == (9, 0)
    assert job.schedule is None and job.timezone == "UTC" and job.input == {}
    assert list(config.actors) == ["job", "other"]  # file order


def test_actors_share_what_they_have_in_common(tmp_path: Path) -> None:
    """A script's resolved path, equal limits and an empty input are one object for all the
    actors that have them (100,000 actors on a few scripts), each still its own value."""
    actors = "".join(
        f'[[actors]]\nname = "a{n}"\nscript = "scripts/job.py"\n'
        + ("limits = { cpu_s = 5 }\n" if n % 2 else "")
        + ('input = { "n" = 1 }\n' if n == 3 else "")
        for n in range(4)
    )
    config = load_config(write(tmp_path, actors), environ={})
    a0, a1, a2, a3 = (config.actors[f"a{n}"] for n in range(4))
    assert a0.script is a1.script and a0.workdir is a3.workdir
    assert a0.script == tmp_path / "scripts" / "job.py"
    assert a1.limits is a3.limits and a0.limits is a2.limits and a1.limits != a0.limits
    assert a1.limits.cpu_s == 5 and a0.limits == config.supervisor.limits
    assert a0.input is a1.input and a0.input == {} and a3.input == {"n": 1}
    assert a0.env is a1.env and a0.env == {}


def test_tmp_mb_is_inherited_from_the_supervisor_and_unlimited_lifts_it(tmp_path: Path) -> None:
    text = """
[supervisor]
limits = { tmp_mb = 32 }

[[actors]]
name = "inherits"
script = "scripts/job.py"

[[actors]]
name = "host_tmp"
script = "scripts/job.py"
limits = { tmp_mb = "unlimited" }
"""
    config = load_config(write(tmp_path, text), environ={})
    assert Limits().tmp_mb == 64  # the default, when nothing sets it
    assert config.actors["inherits"].limits.tmp_mb == 32
    assert config.actors["host_tmp"].limits.tmp_mb is None  # no private tmpfs: the host's /tmp


def test_precedence_is_flag_then_environment_then_file_then_default(tmp_path: Path) -> None:
    path = write(tmp_path, '[supervisor]\nworkers = 3\nlog_level = "warning"\nbatch_size = 7\n')
    environ = {
        "ACTOR_SUPERVISOR_WORKERS": "4",
        "ACTOR_SUPERVISOR_LOG_LEVEL": "DEBUG",
        "ACTOR_SUPERVISOR_QUEUE_SIZE": "50",
        "ACTOR_SUPERVISOR_CONFIG": "ignored: not a setting",
    }
    overrides = {"workers": 8, "log_level": None, "database": "postgresql://db/x"}
    config = load_config(path, overrides=overrides, environ=environ)
    sup = config.supervisor
    assert sup.workers == 8  # flag over environment over file
    assert sup.log_level == "debug"  # environment over file (the flag was not given)
    assert sup.batch_size == 7  # file over default
    assert sup.queue_size == 50  # environment over default
    assert sup.database == "postgresql://db/x"
    assert sup.concurrency == 1  # default
    assert config.sources["workers"] == "flag"
    assert config.sources["log_level"] == "environment"
    assert config.sources["batch_size"] == "file"
    assert config.sources["concurrency"] == "default"


def test_environment_lists_and_limits(tmp_path: Path) -> None:
    path = write(tmp_path, "[supervisor]\nlimits = { cpu_s = 20, nofile = 100 }\n")
    environ = {
        "ACTOR_SUPERVISOR_ENV_ALLOW": "PATH, LANG,HOME",
        "ACTOR_SUPERVISOR_PRELOAD": "json, urllib.parse,json",
        "ACTOR_SUPERVISOR_LIMITS": "nofile=64, memory_mb=unlimited",
        "ACTOR_SUPERVISOR_SHUTDOWN_GRACE_S": "2.5",
        "ACTOR_SUPERVISOR_RUN_AS": "",  # empty: not set
    }
    sup = load_config(path, environ=environ).supervisor
    assert sup.env_allow == ("PATH", "LANG", "HOME")
    assert sup.preload == ("json", "urllib.parse")
    assert sup.limits == dataclasses.replace(Limits(), cpu_s=20, nofile=64, memory_mb=None)
    assert sup.shutdown_grace_s == 2.5
    assert sup.run_as == "nobody"


def test_no_config_file_gives_defaults_with_the_cwd_as_base_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, environ={})
    assert config.path is None and config.base_dir == tmp_path
    assert config.supervisor == SupervisorSettings() and config.actors == {}
    assert config.supervisor.env_allow == DEFAULT_ENV_ALLOW
    assert config.supervisor.preload == DEFAULT_PRELOAD


def test_type_names_and_choices_are_case_insensitive(tmp_path: Path) -> None:
    text = """
[supervisor]
mode = "Exec"

[[actors]]
name = "a"
script = "scripts/job.py"
schedule = { type = "Cron", expression = "0 * * * *" }
catch_up = "ALL"

[[actors]]
name = "b"
script = "scripts/job.py"
schedule = { type = "INTERVAL", seconds = 90 }
"""
    config = load_config(write(tmp_path, text), environ={})
    assert config.supervisor.mode == "exec"
    assert config.actors["a"].schedule == CronSchedule("0 * * * *")
    assert config.actors["a"].catch_up == "all"
    assert config.actors["b"].schedule == IntervalSchedule(90.0)


def test_input_dates_become_iso_strings_and_a_naive_once_uses_the_actor_zone(
    tmp_path: Path,
) -> None:
    text = """
[[actors]]
name = "a"
script = "scripts/job.py"
timezone = "Europe/Berlin"
schedule = { type = "once", at = 2026-07-01T09:00:00 }
input = { when = 2026-01-02T03:04:05Z, day = 2026-01-02, list = [1, 2.5, "x"] }
"""
    actor = load_config(write(tmp_path, text), environ={}).actors["a"]
    assert actor.schedule == OnceSchedule(datetime(2026, 7, 1, 7, tzinfo=UTC).timestamp())
    assert actor.input == {
        "when": "2026-01-02T03:04:05+00:00",
        "day": "2026-01-02",
        "list": [1, 2.5, "x"],
    }


def test_curve_keys_are_checked_and_resolved_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "server.key_secret").write_text("secret")
    text = """
[supervisor]
control = "tcp://0.0.0.0:5570"
control_curve_secret_key = "keys/server.key_secret"
control_curve_authorized_keys = "keys"
"""
    sup = load_config(write(tmp_path, text), environ={}).supervisor
    assert sup.control_curve_secret_key == str(tmp_path / "keys" / "server.key_secret")
    assert sup.control_curve_authorized_keys == str(tmp_path / "keys")


def test_the_settings_table_declares_every_field_once() -> None:
    names = [field.name for field in dataclasses.fields(SupervisorSettings)]
    assert [s.name for s in SETTINGS] == names
    defaults = SupervisorSettings()
    for setting in SETTINGS:
        assert setting.default == getattr(defaults, setting.name)
        assert setting.env_var == "ACTOR_SUPERVISOR_" + setting.name.upper()
        setting.kind.check(setting.default)  # every default passes its own check


# --- errors -----------------------------------------------------------------------------------

SCHEDULED = """
[[actors]]
name = "first"
script = "scripts/job.py"

[[actors]]
name = "backup"
script = "scripts/job.py"
schedule = {schedule}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[supervisor]\nworkers = \n", "invalid TOML: Invalid value (at line 2, column 11)"),
        ("[supervisr]\n", "supervisr: unknown top-level key (did you mean 'supervisor'?)"),
        (
            "[supervisor]\nworkerz = 2\n",
            "supervisor.workerz: unknown key (did you mean 'workers'?); "
            "allowed: alert_repeat_s, allow_root_scripts, allow_subsecond, batch_max_age_ms",
        ),
        (
            '[supervisor]\nworkers = "4"\n',
            "supervisor.workers: expected an integer, got string '4'",
        ),
        (
            "[supervisor]\nworkers = true\n",
            "supervisor.workers: expected an integer, got boolean true",
        ),
        ("[supervisor]\nworkers = 0\n", "supervisor.workers: must be >= 1, got 0"),
        (
            "[supervisor]\nshutdown_grace_s = -1\n",
            "supervisor.shutdown_grace_s: must be >= 0, got -1",
        ),
        (
            '[supervisor]\nmode = "spawn"\n',
            "supervisor.mode: expected one of 'fork', 'exec', got string 'spawn'",
        ),
        (
            '[supervisor]\ncontrol = "http://x:1"\n',
            "supervisor.control: expected a ZeroMQ endpoint 'tcp://HOST:PORT' or 'ipc://PATH'",
        ),
        (
            '[supervisor]\ncontrol_curve_secret_key = "nope.key"\n',
            "supervisor.control_curve_secret_key: no such file",
        ),
        (
            '[supervisor]\ndatabase = "mysql://x"\n',
            "supervisor.database: expected 'sqlite:PATH' or 'postgresql://...', got string",
        ),
        (
            '[supervisor]\nenv_allow = ["PATH", "LC_*"]\n',
            "supervisor.env_allow[1]: expected an environment variable name (globs are not",
        ),
        (
            '[supervisor]\npreload = ["json", "os; import evil"]\n',
            "supervisor.preload[1]: expected a Python module name such as 'urllib.parse', got",
        ),
        (
            "[supervisor]\nlimits = { cpu = 10 }\n",
            "supervisor.limits.cpu: unknown limit (did you mean 'cpu_s'?); allowed: cpu_s",
        ),
        (
            "[supervisor]\nlimits = { memory_mb = 8 }\n",
            "supervisor.limits.memory_mb: must be >= 16, got 8",
        ),
        (
            "[supervisor]\nlimits = { output_kb = 8193 }\n",
            "supervisor.limits.output_kb: must be <= 8192, got 8193",
        ),
        (
            ACTOR + "limits = { stderr_kb = 2048 }\n",
            "actors[0] (job).limits.stderr_kb: must be <= 1024, got 2048",
        ),
        (
            ACTOR + f'input = {{ blob = "{"x" * (8 << 20)}" }}\n',
            f"actors[0] (job).input: {(8 << 20) + 11} characters as JSON, more than a worker "
            f"accepts ({8 << 20})",
        ),
        (
            ACTOR + "limits = { tmp_mb = 0 }\n",
            "actors[0] (job).limits.tmp_mb: must be >= 1, got 0",
        ),
        (
            '[supervisor]\nlimits = { output_kb = "unlimited" }\n',
            "supervisor.limits.output_kb: expected an integer, got string 'unlimited'",
        ),
        ("[actors]\nname = 'x'\n", "actors: expected an array of tables ([[actors]]), got a table"),
        ('[[actors]]\nscript = "scripts/job.py"\n', "actors[0].name: missing"),
        (
            '[[actors]]\nname = "has space"\nscript = "scripts/job.py"\n',
            "actors[0].name: expected a name of 1-200 characters [A-Za-z0-9_.-], got string",
        ),
        (
            ACTOR + "timout_s = 5\n",
            "actors[0] (job).timout_s: unknown key (did you mean 'timeout_s'?); allowed: alert_",
        ),
        (ACTOR + "timeout_s = 0\n", "actors[0] (job).timeout_s: must be > 0, got 0"),
        (
            ACTOR + 'timeout_s = "30"\n',
            "actors[0] (job).timeout_s: expected a positive number, got",
        ),
        (ACTOR + "retry_jitter = 1\n", "actors[0] (job).retry_jitter: expected true or false, got"),
        (
            ACTOR + "retry_backoff_s = 10.0\nretry_backoff_max_s = 5.0\n",
            "actors[0] (job).retry_backoff_max_s: must be >= retry_backoff_s (10.0), got 5.0",
        ),
        (
            ACTOR + 'timezone = "Europe/Berln"\n',
            "actors[0] (job).timezone: unknown time zone 'Europe/Berln' (did you mean "
            "'Europe/Berlin'?)",
        ),
        (
            ACTOR + "limits = { nproc = 0 }\n",
            "actors[0] (job).limits.nproc: must be >= 1, got 0",
        ),
        (
            ACTOR + "env = { LOG_LEVEL = 3 }\n",
            "actors[0] (job).env.LOG_LEVEL: expected a string, got integer 3",
        ),
        (
            ACTOR + "input = { a = [1, nan] }\n",
            "actors[0] (job).input.a[1]: nan is not valid in JSON",
        ),
        (
            ACTOR + 'overlap = "never"\n',
            "actors[0] (job).overlap: expected one of 'skip', 'queue', 'allow', got string",
        ),
        (
            ACTOR + ACTOR,
            "actors[1] (job).name: duplicate actor name 'job' (first defined at actors[0])",
        ),
        (
            ACTOR + 'exec_mode = "cache"\n',
            "actors[0] (job).exec_mode: expected one of 'file', 'database', 'auto', got string",
        ),
        (
            ACTOR + 'sync = "always"\n',
            "actors[0] (job).sync: expected one of 'startup', 'before_run', 'manual', got string",
        ),
        (
            '[[actors]]\nname = "x"\nscript = "scripts"\n',
            "actors[0] (x).script: not a regular file",
        ),
        (
            SCHEDULED.format(schedule='{ type = "cron", expression = "61 * * * *" }'),
            "actors[1] (backup).schedule.expression: invalid cron expression '61 * * * *' "
            "(the minute field '61' is not valid; allowed: 0-59)",
        ),
        (
            SCHEDULED.format(schedule='{ type = "cron" }'),
            "actors[1] (backup).schedule.expression: missing: a cron schedule needs 'expression'",
        ),
        (
            SCHEDULED.format(schedule='{ type = "hourly" }'),
            "actors[1] (backup).schedule.type: expected one of 'cron', 'interval', 'once', "
            "'immediate', got 'hourly'",
        ),
        (
            SCHEDULED.format(schedule='{ type = "interval", seconds = -5 }'),
            "actors[1] (backup).schedule.seconds: must be a positive number, got -5.0",
        ),
        (
            SCHEDULED.format(schedule='{ type = "once", at = "next tuesday" }'),
            "actors[1] (backup).schedule.at: expected an ISO 8601 date-time",
        ),
        (
            SCHEDULED.format(schedule='"*/5 * * * *"'),
            "actors[1] (backup).schedule: expected a table such as",
        ),
    ],
)
def test_errors_name_the_file_the_key_and_what_was_expected(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_a_missing_script_is_accepted_with_the_code_defaults(tmp_path: Path) -> None:
    """The store may hold its code: a deleted script must never stop the supervisor."""
    path = write(tmp_path, '[[actors]]\nname = "x"\nscript = "scripts/missing.py"\n')
    actor = load_config(path, environ={}).actors["x"]
    assert actor.script == tmp_path / "scripts" / "missing.py"
    assert (actor.exec_mode, actor.sync) == ("file", "startup")


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            'script = "scripts/job.py"\ncommand = ["/bin/true"]',
            "actors[0] (x).command: give either `script` or `command`, not both",
        ),
        ("", "actors[0] (x).script: missing; every actor needs a `script` (a Python file) or a "),
        ("command = []", "actors[0] (x).command: expected a non-empty array of strings"),
        ('command = "/bin/true"', "actors[0] (x).command: expected a non-empty array of strings"),
        ('command = ["/bin/echo", 3]', "actors[0] (x).command[1]: expected a string, got integer"),
        ('command = [" "]', "actors[0] (x).command[0]: the program is empty"),
        (
            'command = ["no-such-program-here"]',
            "actors[0] (x).command[0]: 'no-such-program-here' not found on PATH /nowhere",
        ),
        ('command = ["./scripts"]', "actors[0] (x).command[0]: not a regular file"),
        (
            'command = ["/bin/true"]\nexec_mode = "database"',
            "actors[0] (x).exec_mode: a command actor runs its program file; exec_mode "
            "'database' (stored code) applies to Python scripts only",
        ),
    ],
)
def test_command_actor_errors_are_precise(tmp_path: Path, keys: str, expected: str) -> None:
    path = write(tmp_path, f'[[actors]]\nname = "x"\nenv = {{ PATH = "/nowhere" }}\n{keys}\n')
    assert expected in error_of(path)


def test_a_command_resolves_its_program_and_is_versioned_only_inside_the_config_folder(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        '[[actors]]\nname = "local"\ncommand = ["scripts/job.py", "--flag"]\n'
        '[[actors]]\nname = "system"\ncommand = ["sh", "-c", "true"]\n'
        '[[actors]]\nname = "py"\nscript = "scripts/job.py"\n',
    )
    actors = load_config(path, environ={}).actors
    local, system, py = actors["local"], actors["system"], actors["py"]
    assert (local.script, local.command) == (
        tmp_path / "scripts/job.py",
        ("scripts/job.py", "--flag"),
    )
    assert (local.versioned, local.workdir, local.python) == (True, tmp_path, False)
    assert system.script.name == "sh" and system.script.is_absolute() and not system.versioned
    assert (py.command, py.workdir, py.versioned, py.python) == (
        (),
        tmp_path / "scripts",
        True,
        True,
    )


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"ACTOR_SUPERVISOR_WORKERS": "many"},
            "ACTOR_SUPERVISOR_WORKERS: expected an integer, got 'many'",
        ),
        ({"ACTOR_SUPERVISOR_WORKERS": "0"}, "ACTOR_SUPERVISOR_WORKERS: must be >= 1, got 0"),
        (
            {"ACTOR_SUPERVISOR_HEARTBEAT_TIMEOUT_S": "soon"},
            "ACTOR_SUPERVISOR_HEARTBEAT_TIMEOUT_S: expected a number, got 'soon'",
        ),
        (
            {"ACTOR_SUPERVISOR_LOG_FORMAT": "xml"},
            "ACTOR_SUPERVISOR_LOG_FORMAT: expected one of 'text', 'json', got string 'xml'",
        ),
        (
            {"ACTOR_SUPERVISOR_LIMITS": "cpu_s"},
            "ACTOR_SUPERVISOR_LIMITS: expected name=value pairs such as 'cpu_s=10', got 'cpu_s'",
        ),
        (
            {"ACTOR_SUPERVISOR_LIMITS": "cpus=3"},
            "ACTOR_SUPERVISOR_LIMITS.cpus: unknown limit (did you mean 'cpu_s'?)",
        ),
    ],
)
def test_bad_environment_values_name_the_variable(
    tmp_path: Path, environ: dict[str, str], expected: str
) -> None:
    assert expected in error_of(write(tmp_path, ACTOR), environ=environ)


def test_bad_flag_overrides_name_the_flag() -> None:
    assert error_of(None, overrides={"workers": 0}) == "--workers: must be >= 1, got 0"
    assert "--workers: expected an integer, got string '2'" in error_of(
        None, overrides={"workers": "2"}
    )
    assert "overrides.worker: unknown setting (did you mean 'workers'?)" in error_of(
        None, overrides={"worker": 3}
    )


def test_an_unreadable_file_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert (
        error_of(missing)
        == f"{missing}: cannot read the configuration file: No such file or directory"
    )


def test_an_endpoint_reachable_from_other_hosts_needs_curve_keys_for_its_role(
    tmp_path: Path,
) -> None:
    from supervisor.settings import require_curve

    remote = load_config(None, overrides={"control": "tcp://0.0.0.0:5570"}, environ={})
    with pytest.raises(ConfigError, match="set control_curve_secret_key and control_curve_auth"):
        require_curve(remote.supervisor, server=True)
    with pytest.raises(ConfigError, match="set control_curve_server_key and control_curve_client"):
        require_curve(remote.supervisor, server=False)
    local = load_config(None, overrides={"control": "tcp://127.0.0.1:5570"}, environ={})
    require_curve(local.supervisor, server=True)
    key = tmp_path / "server.key_secret"
    key.write_text("x")
    with pytest.raises(ConfigError, match="control_curve_secret_key: CURVE needs control_curve_a"):
        load_config(None, overrides={"control_curve_secret_key": str(key)}, environ={})


def test_the_control_endpoint_defaults_to_a_socket_in_the_state_folder(tmp_path: Path) -> None:
    from supervisor.controlkeys import control_endpoint, generates_keys

    config = load_config(write(tmp_path, ACTOR), environ={})
    assert config.supervisor.control == "ipc://state/control.sock"  # as written: reloads compare
    assert control_endpoint(config) == f"ipc://{tmp_path}/state/control.sock"
    assert not generates_keys(config.supervisor)
    absolute = load_config(None, overrides={"control": "ipc:///run/x.sock"}, environ={})
    assert control_endpoint(absolute) == "ipc:///run/x.sock"
    tcp = load_config(None, overrides={"control": "tcp://127.0.0.1:5570"}, environ={})
    assert generates_keys(tcp.supervisor) and control_endpoint(tcp) == "tcp://127.0.0.1:5570"


def test_a_control_socket_path_too_long_for_a_unix_socket_is_refused(tmp_path: Path) -> None:
    from supervisor.controlkeys import control_endpoint

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    config = load_config(write(deep, ACTOR), environ={})
    size = len(f"{deep}/state/control.sock")
    with pytest.raises(ConfigError) as info:
        control_endpoint(config)
    assert str(info.value) == (
        f"control: the socket path '{deep}/state/control.sock' is {size} bytes, more than a unix "
        "socket address holds (107); move the configuration to a shorter folder or choose "
        "another endpoint with --control"
    )


# --- the store: pool, start-up wait, migrations, spool ---------------------------------------


def test_store_settings_come_from_file_environment_and_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[supervisor]\npool_min_size = 2\npool_max_size = 8\npool_check = false\n"
        'spool_dir = "var/spool"\n',
    )
    environ = {
        "ACTOR_SUPERVISOR_DATABASE_WAIT_S": "2.5",
        "ACTOR_SUPERVISOR_MIGRATE": "off",
        "ACTOR_SUPERVISOR_POOL_ACQUIRE_TIMEOUT_S": "0.5",
    }
    config = load_config(path, environ=environ)
    sup = config.supervisor
    assert (sup.pool_min_size, sup.pool_max_size, sup.pool_check) == (2, 8, False)
    assert (sup.database_wait_s, sup.migrate, sup.pool_acquire_timeout_s) == (2.5, False, 0.5)
    assert sup.pool_connect_timeout_s == 5.0  # default
    assert sup.spool_dir == "var/spool"  # kept as written; the spool resolves it
    assert config.sources["migrate"] == "environment"

    from supervisor.spool import spool_folder
    from supervisor.store import pool_options

    assert spool_folder(sup.spool_dir, config.base_dir) == tmp_path / "var" / "spool"
    options = pool_options(sup)
    assert (options.min_size, options.max_size, options.check) == (2, 8, False)
    assert (options.wait_s, options.acquire_timeout_s) == (2.5, 0.5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[supervisor]\npool_min_size = 5\npool_max_size = 2\n",
            "supervisor.pool_min_size: pool_min_size (5) must be <= pool_max_size (2)",
        ),
        ("[supervisor]\npool_max_size = 0\n", "supervisor.pool_max_size: must be >= 1, got 0"),
        (
            "[supervisor]\npool_connect_timeout_s = 0\n",
            "supervisor.pool_connect_timeout_s: must be > 0, got 0",
        ),
        (
            "[supervisor]\ndatabase_wait_s = -1\n",
            "supervisor.database_wait_s: must be >= 0, got -1",
        ),
        ('[supervisor]\nmigrate = "yes"\n', "supervisor.migrate: expected true or false"),
        ('[supervisor]\nspool_dir = ""\n', "supervisor.spool_dir: expected a path to a folder"),
    ],
)
def test_store_setting_errors_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error_of(write(tmp_path, text))
