"""Operator commands that need no running supervisor, on real stores through the real
``main()``: read commands on a wrong database, ``--json`` errors, ``config show``, ``prune``,
``show-code``/``versions`` messages and ``status`` against a silent endpoint."""

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from supervisor.cli import main
from supervisor.cli.run import status_problems
from supervisor.records import Event, RunRecord
from supervisor.store import open_store
from tests import pg

Cli = Callable[..., tuple[int, str, str]]
DAY = 86400.0


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """``cli("history", ...)`` -> (exit code, stdout, stderr), run in ``tmp_path``."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


READ_COMMANDS = [
    "history",
    "events",
    "alerts",
    "versions job",
    "show-code job",
    "prune --older-than 30d --dry-run",
    "prune --older-than 30d",
]


@pytest.mark.parametrize("command", READ_COMMANDS)
def test_a_wrong_database_is_named_and_nothing_is_created(
    tmp_path: Path, cli: Cli, command: str
) -> None:
    """Before: the file and its folder were created, then 'no such table: runs'."""
    code, out, err = cli(*command.split(), "--database", "sqlite:typo/actors.db")
    assert code == 4, (out, err)
    assert f"no database at {tmp_path}/typo/actors.db (wrong --config or --database?" in err
    assert "from the --database flag" in err
    assert not (tmp_path / "typo").exists()


def test_a_wrong_config_is_named_too(tmp_path: Path, cli: Cli) -> None:
    """A config file in another folder: its relative default database does not exist."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "supervisor.toml").write_text("[supervisor]\nworkers = 1\n")
    code, _, err = cli("history", "--config", str(elsewhere / "supervisor.toml"))
    assert code == 4
    assert f"no database at {elsewhere}/state/actor-supervisor.db" in err
    assert "database from the default" in err
    assert not (elsewhere / "state").exists()


def test_postgres_without_the_database_or_its_tables_gets_a_clear_error(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a missing database is waited for (it may be being created): not for 10 s here
    monkeypatch.setenv("ACTOR_SUPERVISOR_DATABASE_WAIT_S", "0.5")
    missing = pg.database_url("actor_supervisor_no_such_database")
    code, _, err = cli("history", "--database", missing)
    assert code == 4 and "no database postgresql://" in err and "wrong --config" in err, err
    with pg.fresh_database(migrated=False) as empty:
        code, _, err = cli("events", "--database", pg.database_url(empty))
    assert code == 4 and "has no actor-supervisor tables" in err, err
    assert "`actor-supervisor migrate` creates them" in err


def test_under_json_an_error_is_a_json_object_on_stdout_with_the_same_exit_code(
    tmp_path: Path, cli: Cli
) -> None:
    code, out, err = cli("history", "--json", "--database", "sqlite:typo.db")
    assert code == 4 and err == ""
    error = orjson.loads(out)["error"]
    assert error["code"] == "store_error" and error["exit"] == 4
    assert error["message"].startswith(f"no database at {tmp_path}/typo.db")

    code, out, _ = cli("history", "--json", "--config", "missing.toml")
    assert code == 2 and orjson.loads(out)["error"]["code"] == "config_error"


def test_under_json_a_usage_error_is_a_json_object_too(
    tmp_path: Path, cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli("history", "--limit", "0", "--json")
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and err == ""
    assert orjson.loads(out) == {"error": {
        "code": "usage", "message": "argument --limit: expected a whole number >= 1, got 0",
        "exit": 2,
    }}  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_show_code_and_versions_say_precisely_what_was_not_found(tmp_path: Path, cli: Cli) -> None:
    db = "sqlite:actors.db"
    assert cli("migrate", "--database", db)[0] == 0
    code, _, err = cli("show-code", "job", "--history", "abc123", "--database", db)
    assert code == 5 and "'abc123' is too short: give at least 8 characters" in err, err
    code, _, err = cli("show-code", "job", "--history", "abc12345", "--database", db)
    assert code == 5 and "abc12345" in err, err
    code, _, err = cli("show-code", "job", "--version", "9.9.9", "--database", db)
    assert code == 5 and "job: no code version tagged '9.9.9'" in err, err
    code, _, err = cli("show-code", "job", "--database", db)
    assert code == 5 and "job: no active code version (nothing was ever synced" in err, err
    code, out, _ = cli("versions", "job", "--database", db)
    assert code == 0
    assert out.strip() == "job: no code versions recorded (and no actor of that name is configured)"


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:{tmp_path}/actors.db"
        return
    with pg.fresh_database() as name:
        yield pg.database_url(name)


def _seed(url: str, base: Path) -> None:
    """Runs ended 100, 40 and 5 days ago (the 40-day one failed), each with one event."""
    now = time.time()
    store = open_store(url, base_dir=base)
    try:
        store.migrate()
        for run_id, age, status in (("old", 100, "succeeded"), ("failed", 40, "failed_permanent"),
                                    ("young", 5, "succeeded")):  # fmt: skip
            ended = now - age * DAY
            store.write_batch([
                RunRecord(run_id=run_id, attempt=1, actor="job", correlation_id=run_id,
                          trigger="submit", status=status, queued_at=ended - 1,
                          finished_at=ended),
                Event(event_id=f"e-{run_id}", event_type="run_finished", aggregate_type="run",
                      aggregate_id=run_id, created_at=ended),
            ])  # fmt: skip
    finally:
        store.close()


def _run_ids(url: str, base: Path) -> set[str]:
    store = open_store(url, base_dir=base)
    try:
        return {r.run_id for r in store.list_runs(limit=100)}
    finally:
        store.close()


def test_prune_dry_run_counts_then_prune_deletes_keeping_failed_runs_longer(
    tmp_path: Path, cli: Cli, database: str
) -> None:
    _seed(database, tmp_path)
    args = ("--older-than", "30d", "--keep-failed", "90d", "--database", database)
    code, out, _ = cli("prune", *args, "--dry-run", "--json")
    assert code == 0
    assert orjson.loads(out) | {"database": None} == {
        "runs": 1, "attempts": 1, "events": 1, "alerts": 0, "dry_run": True,
        "older_than_days": 30.0, "keep_failed_days": 90.0, "database": None,
    }  # fmt: skip
    assert _run_ids(database, tmp_path) == {"old", "failed", "young"}  # a dry run deletes nothing

    code, out, _ = cli("prune", *args)
    assert code == 0 and out.startswith("deleted 1 run(s) (1 attempt(s), 1 event(s))"), out
    assert _run_ids(database, tmp_path) == {"failed", "young"}

    code, out, _ = cli("prune", "--older-than", "30d", "--database", database, "--json")
    assert code == 0 and orjson.loads(out)["runs"] == 1  # without --keep-failed: 30 days
    assert _run_ids(database, tmp_path) == {"young"}


def test_prune_refuses_a_cutoff_under_a_day_and_a_bad_duration(cli: Cli) -> None:
    code, _, err = cli("prune", "--older-than", "12h", "--database", "sqlite:x.db")
    assert code == 2 and "--older-than: at least 1d" in err
    with pytest.raises(SystemExit) as exited:
        cli("prune", "--older-than", "30 days")
    assert exited.value.code == 2


CONFIG = """\
[supervisor]
workers = 3
database = "postgresql://ops:hunter2@db.example/actors"

[[actors]]
name = "job"
script = "job.py"
mode = "exec"
env = { API_TOKEN = "t0ken", REGION = "eu" }

[[alerts]]
name = "hook"
webhook = "https://user:pw@hooks.example/x?token=abc&channel=ops"
secret = "s3cret"
headers = { Authorization = "Bearer zzz", "X-Team" = "ops" }
events = ["run_failed"]
"""


def test_config_show_says_where_each_value_came_from_with_secrets_masked(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "supervisor.toml").write_text(CONFIG)
    (tmp_path / "job.py").write_text("print('{}')\n")
    monkeypatch.setenv("ACTOR_SUPERVISOR_LOG_LEVEL", "debug")
    code, out, _ = cli("config", "show", "--json", "--concurrency", "2")
    assert code == 0
    shown = orjson.loads(out)
    settings = shown["supervisor"]
    assert settings["concurrency"] == {"value": 2, "source": "flag", "from": "--concurrency"}
    assert settings["log_level"] == {
        "value": "debug", "source": "environment", "from": "ACTOR_SUPERVISOR_LOG_LEVEL",
    }  # fmt: skip
    assert settings["workers"] == {
        "value": 3, "source": "file", "from": "supervisor.toml: supervisor.workers",
    }  # fmt: skip
    assert settings["queue_size"] == {"value": 10000, "source": "default", "from": "default"}
    assert settings["database"]["value"] == "postgresql://ops:***@db.example/actors"

    job = shown["actors"]["job"]
    assert (
        job["mode"]["source"] == "file" and job["mode"]["from"] == "supervisor.toml: actors[0].mode"
    )
    assert job["max_consecutive_failures"]["source"] == "supervisor"
    assert job["timeout_s"] == {"value": 60.0, "source": "default", "from": "default"}
    assert job["env"]["value"] == {"API_TOKEN": "***", "REGION": "eu"}

    [hook] = shown["alerts"]
    assert hook["from"] == "supervisor.toml: alerts[0]"
    assert hook["value"]["secret"] == "***"
    assert hook["value"]["headers"] == {"Authorization": "***", "X-Team": "ops"}
    assert hook["value"]["webhook"] == "https://user:***@hooks.example/x?token=***&channel=ops"
    for secret in ("hunter2", "t0ken", "s3cret", "Bearer", "abc", ":pw@"):
        assert secret not in out

    code, text, _ = cli("config", "show")  # the text form hides the same
    assert code == 0 and "workers = 3" in text and "# --concurrency" not in text
    assert all(secret not in text for secret in ("hunter2", "t0ken", "s3cret", "zzz"))


def test_status_against_a_silent_endpoint_names_it_and_where_it_came_from(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket file nobody answers on (a supervisor killed with SIGKILL leaves one)."""
    path = tmp_path / "dead.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening: connections are refused
    monkeypatch.setenv("ACTOR_SUPERVISOR_CONTROL", f"ipc://{path}")
    try:
        started = time.monotonic()
        code, _, err = cli("status", "--timeout", "0.5")
        took = time.monotonic() - started
    finally:
        dead.close()
    assert code == 3 and took < 5, (took, err)
    assert f"no supervisor at ipc://{path} (control from the environment variable " in err
    assert "ACTOR_SUPERVISOR_CONTROL): no answer within 0.5s" in err

    monkeypatch.delenv("ACTOR_SUPERVISOR_CONTROL")
    code, _, err = cli("status")  # no socket file at all: said at once
    assert code == 3
    assert f"no supervisor at ipc://{tmp_path}/state/control.sock (control from the default" in err
    assert "no socket file there" in err
    started = time.monotonic()
    code, out, _ = cli("reload", "--json")  # the same for reload, at once, not after 30 s
    assert code == 3 and time.monotonic() - started < 5
    assert "no socket file there" in orjson.loads(out)["error"]["message"]


def _status(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "supervisor": {"phase": "running"},
        "store": {"degraded": False, "spool_depth": 0, "last_error": None},
        "workers": [{"ready": True}, {"ready": False}],
    }
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return data


def test_status_check_names_a_degraded_store_and_no_ready_worker() -> None:
    assert status_problems(_status()) == []
    degraded = _status(store={"degraded": True, "spool_depth": 12, "last_error": "refused"})
    assert status_problems(degraded) == [
        "the store is degraded: 12 record(s) spooled, last error: refused"
    ]
    idle = _status(workers=[{"ready": False}])
    assert status_problems(idle) == ["no worker is ready (0 of 1)"]
    stopping = _status(supervisor={"phase": "stopping"})
    assert status_problems(stopping) == ["the supervisor is stopping, not running"]
