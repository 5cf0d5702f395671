"""``show``, ``rerun``, ``cancel``, ``events`` and ``history`` against a real supervisor: the
commands as a user runs them (subprocesses), the outcomes as the store records them.

One supervisor with one worker slot is shared by the module, so a run that blocks the slot is
how a run is kept queued. Every test leaves the slot free again.
"""

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from protocol.client import Accepted
from supervisor.events import short_id
from supervisor.records import RunRecord
from supervisor.store import open_store
from tests import pg
from tests.helpers import shared_folder, wait_for
from tests.supervisor.harness import (
    ECHO,
    RunningSupervisor,
    session_uids,
    start_supervisor,
    write_script,
)

# Fails (retryably) the first time a key is seen, succeeds after: "failed, then retried".
ONCE = """\
    import json, os, sys
    key = json.load(sys.stdin)["key"]
    marker = os.path.join(os.environ["SHARED"], "once-" + key)
    if not os.path.exists(marker):
        open(marker, "w").close()
        sys.stderr.write("first attempt of " + key + " fails on purpose\\n")
        sys.exit(75)
    sys.stderr.write("second attempt of " + key + "\\n")
    print(json.dumps({"key": key, "ok": True}))
"""

# Says it started (with its pid), then holds its slot until released or killed.
BLOCK = """\
    import json, os, sys, time
    key = json.load(sys.stdin)["key"]
    shared = os.environ["SHARED"]
    with open(os.path.join(shared, "pid-" + key + ".tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.rename(os.path.join(shared, "pid-" + key + ".tmp"), os.path.join(shared, "pid-" + key))
    while not os.path.exists(os.path.join(shared, "release-" + key)):
        time.sleep(0.02)
    print(json.dumps({"released": key}))
"""


def actors(folder: Path) -> str:
    shared = shared_folder(folder)
    write_script(folder, "once.py", ONCE)
    write_script(folder, "block.py", BLOCK)
    write_script(folder, "echo.py", ECHO)
    return f"""
[[actors]]
name = "once"
script = "scripts/once.py"
env = {{ SHARED = "{shared}" }}
max_retries = 2
retry_backoff_s = 0.05
retry_jitter = false

[[actors]]
name = "block"
script = "scripts/block.py"
env = {{ SHARED = "{shared}" }}
timeout_s = 120

[[actors]]
name = "echo"
script = "scripts/echo.py"
"""


@pytest.fixture(scope="module")
def sup() -> Iterator[RunningSupervisor]:
    folder = Path(tempfile.mkdtemp(prefix="actor-supervisor-test-"))  # scripts' user enters it
    running = start_supervisor(folder, actors(folder), workers=1, settings="kill_grace_s = 1\n")
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(folder, ignore_errors=True)


def cli(sup: RunningSupervisor, *args: str) -> subprocess.CompletedProcess[str]:
    done = sup.cli(*args)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def ok_json(sup: RunningSupervisor, *args: str) -> Any:
    done = cli(sup, *args, "--json")
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def submit(sup: RunningSupervisor, actor: str, value: Any) -> str:
    with sup.client() as client:
        accepted = client.submit(actor, value)
    assert isinstance(accepted, Accepted)
    return accepted.run_id


def attempts(sup: RunningSupervisor, run_id: str) -> list[RunRecord]:
    database = os.environ.get("ACTOR_SUPERVISOR_DATABASE", "sqlite:state/actor-supervisor.db")
    store = open_store(database, base_dir=sup.folder)
    try:
        return sorted(store.list_runs(run_id=run_id), key=lambda r: r.attempt)
    finally:
        store.close()


def final(sup: RunningSupervisor, run_id: str) -> RunRecord:
    def done() -> RunRecord | None:
        found = attempts(sup, run_id)
        return found[-1] if found and found[-1].is_final else None

    return wait_for(done, 60, f"run {run_id} to end")


def shared(sup: RunningSupervisor) -> Path:
    return sup.folder / "shared"


def sharing_a_prefix(sup: RunningSupervisor, actor: str, value: Any) -> tuple[str, str, str]:
    """Two runs whose ids share at least 8 characters (time-ordered ids: runs queued within
    seconds of each other do), and that shared prefix."""
    first = submit(sup, actor, value)
    while True:
        second = submit(sup, actor, value)
        same = [a == b for a, b in zip(first, second, strict=True)] + [False]
        common = first[: same.index(False)]
        if len(common) >= 8:
            return first, second, common
        first = second  # straddled a boundary of the time digits: the next pair will not


@pytest.mark.timeout(120)
def test_show_tells_a_failed_then_retried_run_by_a_prefix(sup: RunningSupervisor) -> None:
    run_id = submit(sup, "once", {"key": "show"})
    final(sup, run_id)
    doc = ok_json(sup, "show", run_id[:20])
    assert (doc["run_id"], doc["actor"], doc["status"]) == (run_id, "once", "succeeded")
    first, second = doc["attempts"]
    assert (first["status"], first["reason"], first["exit_code"]) == (
        "failed_retryable", "exit_code", 75,
    )  # fmt: skip
    assert "first attempt of show fails" in first["stderr_tail"]
    assert (second["status"], second["exit_code"], second["trigger"]) == ("succeeded", 0, "retry")
    for attempt in (first, second):
        assert attempt["worker_id"] and attempt["code_sha256"] and attempt["code_history_id"]
        assert attempt["code_version"] == "1.0.0"
        assert attempt["queued_at"] <= attempt["started_at"] <= attempt["finished_at"]
    assert doc["input"] == {"key": "show"} and doc["output"] == {"key": "show", "ok": True}
    assert "second attempt of show" in doc["stderr_tail"]
    types = [e["event_type"] for e in doc["events"]]
    assert types == ["run_queued", "run_started", "run_failed",
                     "run_queued", "run_started", "run_succeeded"]  # fmt: skip

    text = cli(sup, "show", run_id[:16])
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert f"run {run_id}  actor once  succeeded" in out
    assert "attempt 1  failed_retryable (exit_code)  exit 75" in out
    assert "attempt 2  succeeded  exit 0" in out
    assert '"ok": true' in out and "second attempt of show" in out
    assert "run_succeeded" in out and first["worker_id"] in out
    assert f"version 1.0.0, history {first['code_history_id']}" in out

    # history and events take the prefix too; history shows the error text in its table
    history = cli(sup, "history", "--run", run_id[:16])
    assert history.returncode == 0 and "ERROR" in history.stdout
    failed_line = next(line for line in history.stdout.splitlines() if "failed_retryable" in line)
    assert failed_line.endswith("exited with code 75 (EX_TEMPFAIL)")
    events = ok_json(sup, "events", "--run", run_id[:16])
    assert [e["event_type"] for e in events] == list(reversed(types))  # newest first
    oldest = ok_json(sup, "events", "--run", run_id[:16], "--oldest-first")
    assert [e["event_type"] for e in oldest] == types
    page = ok_json(sup, "events", "--run", run_id, "--before", events[1]["event_id"][:20])
    assert [e["event_id"] for e in page] == [e["event_id"] for e in events[2:]]


@pytest.mark.timeout(120)
def test_short_ambiguous_and_unknown_ids_are_refused_clearly(sup: RunningSupervisor) -> None:
    first, second, common = sharing_a_prefix(sup, "echo", {"n": 1})
    final(sup, first), final(sup, second)
    for command in (["show"], ["history", "--run"], ["events", "--run"], ["rerun"], ["cancel"]):
        ambiguous = cli(sup, *command, common)
        assert ambiguous.returncode == 5 and ambiguous.stdout == "", command
        assert "ambiguous" in ambiguous.stderr and first in ambiguous.stderr
        assert second in ambiguous.stderr
        short = cli(sup, *command, first[:7])
        assert short.returncode == 5 and "at least 8 characters" in short.stderr, command
        unknown = cli(sup, *command, "ffffffff")
        assert unknown.returncode == 5 and "no run id starts with 'ffffffff'" in unknown.stderr
    assert ok_json(sup, "show", first)["run_id"] == first
    # code versions take prefixes as well
    history_id = ok_json(sup, "show", first)["attempts"][0]["code_history_id"]
    code = cli(sup, "show-code", "echo", "--history", short_id(history_id))
    assert code.returncode == 0 and "json.load" in code.stdout


@pytest.mark.timeout(120)
def test_rerun_runs_the_same_input_again_linked_to_the_old_run(sup: RunningSupervisor) -> None:
    old = submit(sup, "echo", {"again": [1, 2]})
    final(sup, old)
    done = cli(sup, "rerun", old[:14], "--wait", "--json")
    assert done.returncode == 0, done.stderr
    outcome = orjson.loads(done.stdout)
    new = outcome["run_id"]
    assert new != old and outcome["rerun_of"] == old
    assert (outcome["status"], outcome["output"]) == ("succeeded", {"echo": {"again": [1, 2]}})
    doc = ok_json(sup, "show", new)
    assert (doc["rerun_of"], doc["trigger"], doc["input"]) == (old, "rerun", {"again": [1, 2]})
    assert ok_json(sup, "show", old)["reruns"] == [new]
    assert f"rerun of {old}" in cli(sup, "show", new).stdout
    assert f"rerun as {new}" in cli(sup, "show", old).stdout
    accepted = cli(sup, "rerun", new)  # a rerun of a rerun, without waiting
    assert accepted.returncode == 0 and f"a rerun of {new}" in accepted.stdout
    final(sup, accepted.stdout.split()[2])  # "accepted: run ID (echo), a rerun of ..."


@pytest.mark.timeout(120)
def test_a_queued_run_cancelled_never_starts(sup: RunningSupervisor) -> None:
    holder = submit(sup, "block", {"key": "holder"})
    wait_for((shared(sup) / "pid-holder").exists, 30, "the holder to take the only slot")
    queued = submit(sup, "block", {"key": "queued"})
    # clients waiting on a run hear its cancel: a `submit --wait`, and a `rerun --wait` of it
    submitter = _waiting(sup, "submit", "echo", "--input", '{"w": 1}')
    waiting = wait_for(lambda: _queued(sup, "echo", '{"w":1}'), 30, "the submit to be queued")
    rerunner = _waiting(sup, "rerun", waiting)
    rerun = wait_for(lambda: _rerun_of(sup, waiting), 30, "the rerun to be queued")

    done = cli(sup, "cancel", queued[:16], "--json")
    assert done.returncode == 0, done.stderr
    outcome = orjson.loads(done.stdout)
    assert (outcome["status"], outcome["reason"], outcome["started_at"]) == (
        "cancelled", "cancelled", None,
    )  # fmt: skip
    for run_id, client in ((waiting, submitter), (rerun, rerunner)):
        assert cli(sup, "cancel", run_id).returncode == 0
        out, err = client.communicate(timeout=30)
        assert client.returncode == 1, err  # --wait exits 1 for a run that did not succeed
        assert orjson.loads(out)["status"] == "cancelled"

    (shared(sup) / "release-holder").touch()
    assert final(sup, holder).status == "succeeded"
    for cancelled in (queued, waiting, rerun):
        rows = attempts(sup, cancelled)
        assert [(r.status, r.started_at) for r in rows] == [("cancelled", None)]
    assert not (shared(sup) / "pid-queued").exists()  # it never ran
    again = cli(sup, "cancel", queued)
    assert again.returncode == 5 and "already finished: cancelled" in again.stderr
    finished = cli(sup, "cancel", holder)
    assert finished.returncode == 5 and "already finished: succeeded" in finished.stderr


def _waiting(sup: RunningSupervisor, *args: str) -> subprocess.Popen[str]:
    """A CLI command that waits for a run's outcome (``--wait --json``), started now."""
    command = [sys.executable, "-m", "supervisor.cli", *args, "--wait", "--json"]
    return subprocess.Popen(
        [*command, "--config", str(sup.config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=sup.folder,
    )  # fmt: skip


def _queued(sup: RunningSupervisor, actor: str, input_json: str) -> str | None:
    database = os.environ.get("ACTOR_SUPERVISOR_DATABASE", "sqlite:state/actor-supervisor.db")
    store = open_store(database, base_dir=sup.folder)
    try:
        found = store.find_runs(actor=actor, status="queued", limit=100)
    finally:
        store.close()
    return next((r.run_id for r in found if r.input_json == input_json), None)


def _rerun_of(sup: RunningSupervisor, old: str) -> str | None:
    reruns: list[str] = ok_json(sup, "show", old)["reruns"]
    return reruns[0] if reruns else None


@pytest.mark.timeout(120)
def test_a_running_run_cancelled_is_killed_and_recorded_cancelled(
    sup: RunningSupervisor,
) -> None:
    run_id = submit(sup, "block", {"key": "victim"})
    pid_file = shared(sup) / "pid-victim"
    wait_for(pid_file.exists, 30, "the run to start")
    pid = int(pid_file.read_text())
    done = cli(sup, "cancel", run_id)
    assert done.returncode == 0, done.stderr
    assert "cancelled" in done.stdout
    (row,) = attempts(sup, run_id)
    assert (row.status, row.reason, row.attempt) == ("cancelled", "cancelled", 1)
    assert row.started_at is not None and row.signal == signal.SIGTERM
    assert "cancelled by an operator while running" in (row.error or "")
    assert not _alive(pid)
    types = [e["event_type"] for e in ok_json(sup, "events", "--run", run_id, "--oldest-first")]
    assert types == ["run_queued", "run_started", "run_cancel_requested", "run_cancelled"]
    assert final(sup, submit(sup, "echo", {})).status == "succeeded"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(120)
def test_events_follow_streams_new_events_until_interrupted(sup: RunningSupervisor) -> None:
    with _follower(sup, "--json", "--limit", "3") as follower:
        lines = Lines(follower)
        backlog = [orjson.loads(lines.next()) for _ in range(3)]
        assert [e["created_at"] for e in backlog] == sorted(e["created_at"] for e in backlog)
        run_id = submit(sup, "echo", {"follow": True})
        seen: list[str] = []
        while "run_succeeded" not in seen:
            event = orjson.loads(lines.next())
            if event["aggregate_id"] == run_id:
                seen.append(event["event_type"])
        assert seen == ["run_queued", "run_started", "run_succeeded"]
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=30) == 130
        assert follower.stderr is not None and b"Traceback" not in follower.stderr.read()


@pytest.mark.timeout(120)
def test_events_follow_into_a_closed_pipe_ends_quietly(sup: RunningSupervisor) -> None:
    with _follower(sup, "--limit", "1") as follower:
        assert Lines(follower).next().strip()
        assert follower.stdout is not None
        follower.stdout.close()  # as `| head -1` does once it has its line
        while follower.poll() is None:  # each new event is a write into the closed pipe
            final(sup, submit(sup, "echo", {}))
        assert follower.returncode == 141
        assert follower.stderr is not None and follower.stderr.read() == b""


@contextmanager
def _follower(sup: RunningSupervisor, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``events --follow`` as a user starts it; killed if a test left it running."""
    command = [sys.executable, "-m", "supervisor.cli", "events", "--follow", *args]
    with subprocess.Popen(
        [*command, "--config", str(sup.config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=sup.folder,
    ) as proc:  # fmt: skip
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


class Lines:
    """Lines of a child's stdout as they come, read off the descriptor (no buffer of its own
    can hide a line from ``select``)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._fd = proc.stdout.fileno()
        self._proc = proc
        self._buffer = b""

    def next(self, timeout: float = 30.0) -> bytes:
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([self._fd], [], [], timeout)
            assert ready, "no line from the follower in time"
            chunk = os.read(self._fd, 65536)
            if not chunk:
                stderr = self._proc.stderr.read() if self._proc.stderr else b""
                raise AssertionError(f"the follower ended: {stderr!r}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line


@pytest.mark.timeout(180)
def test_show_rerun_and_cancel_on_postgres(
    public_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pg.fresh_database() as name:
        monkeypatch.setenv("ACTOR_SUPERVISOR_DATABASE", pg.database_url(name))
        uids = session_uids(shift=1)  # the module's supervisor holds the default block
        settings = f'kill_grace_s = 1\nrun_as_range = "{uids[0]}-{uids[-1]}"\n'
        running = start_supervisor(public_tmp, actors(public_tmp), workers=1, settings=settings)
        try:
            run_id = submit(running, "once", {"key": "pg"})
            assert final(running, run_id).status == "succeeded"
            doc = ok_json(running, "show", run_id[:10])
            assert [a["status"] for a in doc["attempts"]] == ["failed_retryable", "succeeded"]
            rerun = ok_json(running, "rerun", run_id[:10], "--wait")
            assert rerun["status"] == "succeeded" and rerun["rerun_of"] == run_id
            assert ok_json(running, "show", run_id)["reruns"] == [rerun["run_id"]]
            blocked = submit(running, "block", {"key": "pg"})
            wait_for((running.folder / "shared" / "pid-pg").exists, 30, "the run to start")
            assert ok_json(running, "cancel", blocked[:16])["status"] == "cancelled"
            short = cli(running, "show", run_id[:6])
            assert short.returncode == 5 and "at least 8 characters" in short.stderr
        finally:
            running.stop()
