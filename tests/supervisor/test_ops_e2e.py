"""Operator commands against a real supervisor: ``reload`` over the control channel, ``status``
in text (last run, pause reason, error, alert counts) and ``--check``, the start-up code
summary, ``retention_days`` in the running writer, and a start that fails or is stopped early
leaving no runtime folder behind.

One supervisor serves the module's read-mostly tests; the retention and start-up tests start
their own.
"""

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from supervisor.records import Event, RunRecord
from supervisor.store import open_store
from tests.helpers import free_port, wait_for
from tests.supervisor.harness import (
    ECHO,
    RunningSupervisor,
    killed_after,
    session_uids,
    start_supervisor,
    write_script,
)

Start = Callable[..., RunningSupervisor]
SYSTEM_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
DAY = 86400.0

FAILING = """\
    import sys
    sys.stderr.write("boom: the disk is full\\n")
    sys.exit(3)
"""

ACTORS = """
[[actors]]
name = "echo"
script = "scripts/echo.py"

[[actors]]
name = "bad"
script = "scripts/failing.py"
max_retries = 0
"""

ALERTS = f"""
[[alerts]]
name = "sink"
command = ["{SYSTEM_PYTHON}", "-c", "import sys; sys.stdin.read()"]
events = ["run_failed"]
"""


@pytest.fixture(scope="module")
def sup() -> Iterator[RunningSupervisor]:
    folder = Path(tempfile.mkdtemp(prefix="actor-supervisor-test-"))
    write_script(folder, "echo.py", ECHO)
    write_script(folder, "failing.py", FAILING)
    uids = session_uids(shift=1)  # the retention test runs a second supervisor meanwhile
    running = start_supervisor(
        folder,
        ACTORS + ALERTS,
        settings=f'alert_repeat_s = 0\nrun_as_range = "{uids[0]}-{uids[-1]}"\n'
        f'http_listen = "127.0.0.1:{free_port()}"\n',
    )
    with killed_after(running, folder):
        yield running


def test_start_up_code_sync_ends_with_one_summary_line(sup: RunningSupervisor) -> None:
    assert "code: 2 actors, 2 changed, 0 unchanged, 0 drifted, 0 failed" in sup.log()


def test_status_text_shows_last_run_pause_reason_error_and_alerts(sup: RunningSupervisor) -> None:
    done = sup.cli("submit", "bad", "--wait", "--json")
    assert done.returncode == 1, done
    run_id = orjson.loads(done.stdout)["run_id"]
    assert sup.cli("pause", "bad", "--reason", "disk full, see ticket 42").returncode == 0
    wait_for(lambda: sup.status()["alerts"]["delivered"] == 1, 60, "the alert to be delivered")

    text = sup.cli("status")
    assert text.returncode == 0, text
    [row] = [line for line in text.stdout.splitlines() if line.startswith("bad ")]
    assert run_id[:12] in row and "failed_permanent" in row and " yes " in row
    assert "bad: paused: disk full, see ticket 42" in text.stdout
    assert (
        f"bad: last run {run_id} exit_code: exited with code 3 "
        "(stderr: boom: the disk is full)" in text.stdout
    )
    assert "alerts: 0 pending, 1 delivered, 0 failed since start" in text.stdout

    last = next(a for a in sup.status()["actors"] if a["name"] == "bad")["last_run"]
    assert (last["run_id"], last["status"]) == (run_id, "failed_permanent")

    check = sup.cli("status", "--check", "--json")
    assert check.returncode == 0 and orjson.loads(check.stdout)["problems"] == [], check

    # the same outbox through the HTTP API, as `alerts --json` reads it, and in /metrics
    with contextlib.closing(_http(sup)) as http:
        [alert] = http.get("/api/v1/alerts").json()["alerts"]
        assert (alert["event"], alert["run_id"], alert["status"]) == (
            "run_failed",
            run_id,
            "delivered",
        )
        cli_alerts = orjson.loads(sup.cli("alerts", "--json").stdout)
        assert [a["alert_id"] for a in cli_alerts] == [alert["alert_id"]]
        assert http.get("/api/v1/alerts", params={"status": "pending"}).json() == {"alerts": []}
        bad = http.get("/api/v1/alerts", params={"status": "lost"})
        assert bad.status_code == 400 and bad.json()["code"] == "bad_parameter"
        assert "/alerts" in http.get("/api/v1/openapi.json").json()["paths"]
        metrics = http.get("/metrics").text
        assert 'actor_supervisor_alerts{status="delivered"} 1.0' in metrics
        assert 'actor_supervisor_alerts{status="pending"} 0.0' in metrics


def _http(sup: RunningSupervisor) -> httpx.Client:
    listen = next(
        line.split('"')[1] for line in sup.config_path.read_text().splitlines()
        if line.startswith("http_listen")
    )  # fmt: skip
    token = (sup.folder / "state" / "http-token").read_text().strip()
    client = httpx.Client(
        base_url=f"http://{listen}", timeout=30, headers={"Authorization": f"Bearer {token}"}
    )
    wait_for(lambda: _answers(client), 30, "the HTTP server to answer")
    return client


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/health").status_code == 200
    except httpx.TransportError:
        return False


def test_reload_over_the_control_channel_says_what_changed_or_why_not(
    sup: RunningSupervisor,
) -> None:
    original = sup.config_path.read_text()
    try:
        sup.config_path.write_text(
            original.replace('name = "echo"', 'name = "echo"\ntimeout_s = 30')
            + '\n[[actors]]\nname = "extra"\nscript = "scripts/echo.py"\n'
        )
        done = sup.cli("reload", "--json")
        assert done.returncode == 0, done
        answer = orjson.loads(done.stdout)
        assert (answer["added"], answer["removed"], answer["changed"]) == (
            ["extra"], [], ["echo"],
        )  # fmt: skip
        assert "extra" in {a["name"] for a in sup.status()["actors"]}

        again = sup.cli("reload")
        assert again.returncode == 0 and again.stdout.strip().endswith("nothing changed"), again

        # valid to read, refused by the supervisor: a new actor's script does not exist
        sup.config_path.write_text(
            original + '\n[[actors]]\nname = "ghost"\nscript = "scripts/ghost.py"\n'
        )
        refused = sup.cli("reload", "--json")
        assert refused.returncode == 5, refused
        error = orjson.loads(refused.stdout)["error"]
        assert error["code"] == "config_rejected"
        assert f"no such file: '{sup.folder}/scripts/ghost.py'" in error["message"]
        assert "the running configuration stays in effect" in error["message"]
        assert "ghost" not in {a["name"] for a in sup.status()["actors"]}
        # a file the command itself cannot read: the same located error, before asking
        sup.config_path.write_text(original + '\n[[actors]]\nname = "broken"\n')
        unreadable = sup.cli("reload")
        assert unreadable.returncode == 2
        assert "actors[2] (broken).script: missing" in unreadable.stderr
    finally:
        sup.config_path.write_text(original)
        sup.cli("reload")


def _seed_old_runs(folder: Path) -> None:
    store = open_store("sqlite:state/actor-supervisor.db", base_dir=folder)
    try:
        store.migrate()
        now = time.time()
        for run_id, age in (("old", 45.0), ("young", 2.0)):
            ended = now - age * DAY
            store.write_batch([
                RunRecord(run_id=run_id, attempt=1, actor="echo", correlation_id=run_id,
                          trigger="submit", status="succeeded", queued_at=ended - 1,
                          finished_at=ended),
                Event(event_id=f"e-{run_id}", event_type="run_finished", aggregate_type="run",
                      aggregate_id=run_id, created_at=ended),
            ])  # fmt: skip
    finally:
        store.close()


@pytest.mark.timeout(120)
def test_retention_days_prunes_in_the_running_supervisor(
    public_tmp: Path, supervisors: Start
) -> None:
    write_script(public_tmp, "echo.py", ECHO)
    (public_tmp / "state").mkdir(mode=0o700)
    _seed_old_runs(public_tmp)
    running = supervisors(
        '[[actors]]\nname = "echo"\nscript = "scripts/echo.py"\n', settings="retention_days = 30\n"
    )

    def run_ids() -> set[str]:
        store = running.store()
        try:
            return {r.run_id for r in store.list_runs(limit=100)}
        finally:
            store.close()

    wait_for(lambda: "old" not in run_ids(), 30, "the 45-day-old run to be pruned")
    assert "young" in run_ids()
    done = running.cli("submit", "echo", "--wait", "--json")  # and the supervisor works on
    assert done.returncode == 0, done
    running.wait_for_log("retention: pruned 1 run(s)", 10, "the log line")
    assert running.stop() == 0

    # after a restart, status knows each actor's last run from the store at once
    again = supervisors(config=running.config_path)
    [echo] = again.status()["actors"]
    assert echo["last_run"]["run_id"] == orjson.loads(done.stdout)["run_id"]
    assert echo["last_run"]["status"] == "succeeded"
    assert again.stop() == 0


def _start(folder: Path, config: str, tmpdir: Path) -> subprocess.Popen[str]:
    path = folder / "supervisor.toml"
    uids = session_uids()  # not the default range, which another test's supervisor may hold
    path.write_text(textwrap.dedent(config) + f'run_as_range = "{uids[0]}-{uids[-1]}"\n')
    return subprocess.Popen(
        [sys.executable, "-m", "supervisor.cli", "start", "--config", str(path)],
        cwd=folder, env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmpdir)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


UNREACHABLE = """\
[supervisor]
database = "postgresql://postgres@127.0.0.1:1/none"
database_wait_s = {wait}
"""


@pytest.mark.timeout(60)
def test_a_start_that_fails_early_leaves_no_runtime_folder(tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = _start(tmp_path, UNREACHABLE.format(wait=0), tmpdir)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 4 and "cannot connect" in err, err
    assert list(tmpdir.iterdir()) == []


@pytest.mark.timeout(60)
def test_sigterm_while_starting_unwinds_and_leaves_no_runtime_folder(tmp_path: Path) -> None:
    """Waiting for its database, the supervisor used to die of SIGTERM at once, leaving
    /tmp/actor-supervisor-* behind."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = _start(tmp_path, UNREACHABLE.format(wait=30), tmpdir)
    assert proc.stderr is not None
    lines: list[str] = []
    wait_for(lambda: "retrying in" in (lines.append(proc.stderr.readline()) or lines[-1]), 20,
             "the supervisor to wait for its database")  # fmt: skip
    assert [p.name.startswith("actor-supervisor-") for p in tmpdir.iterdir()] == [True]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM during start-up; nothing was started" in err
    assert list(tmpdir.iterdir()) == []
