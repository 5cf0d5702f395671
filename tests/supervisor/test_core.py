"""The supervisor end to end: a real process, real workers, real scripts, a real SQLite file."""

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import psutil
import pytest
import zmq

from protocol.client import Accepted, ClientError, RunOutcome
from tests.helpers import wait_for
from tests.supervisor.harness import ECHO, RunningSupervisor, write_script

Start = Callable[..., RunningSupervisor]

ECHO_ACTOR = """
[[actors]]
name = "echo"
script = "scripts/echo.py"
"""


def _echo(public_tmp: Path) -> Path:
    return write_script(public_tmp, "echo.py", ECHO)


@pytest.mark.timeout(120)
def test_submit_wait_returns_the_outcome_and_everything_is_recorded(
    public_tmp: Path, supervisors: Start
) -> None:
    script = _echo(public_tmp)
    sup = supervisors(ECHO_ACTOR)
    with sup.client() as client:
        outcome = client.submit("echo", {"n": 1, "text": "grüß"}, wait=True)
    assert isinstance(outcome, RunOutcome)
    assert outcome.status == "succeeded", outcome
    assert outcome.output == {"echo": {"n": 1, "text": "grüß"}}
    assert outcome.code_sha256 == hashlib.sha256(script.read_bytes()).hexdigest()
    assert outcome.exit_code == 0 and outcome.reason is None and outcome.attempts == 1
    assert outcome.duration_ms is not None and outcome.duration_ms > 0

    assert sup.stop() == 0
    store = sup.store()
    try:
        (run,) = store.list_runs(actor="echo")
        assert (run.run_id, run.status, run.trigger) == (outcome.run_id, "succeeded", "submit")
        assert orjson.loads(run.output_json or "") == outcome.output
        assert run.code_sha256 == outcome.code_sha256
        found = store.list_events(aggregate_type="run", aggregate_id=outcome.run_id)
        assert [e.event_type for e in found] == ["run_queued", "run_started", "run_succeeded"]
        finished = found[-1].metadata
        assert finished["duration_ms"] == pytest.approx(outcome.duration_ms)
        assert finished["correlation_id"] == outcome.run_id
        assert all(e.correlation_id == outcome.run_id for e in found)
    finally:
        store.close()
    assert "supervisor stopped" in sup.log()


FAILING_ACTORS = """
[[actors]]
name = "exit3"
script = "scripts/exit3.py"

[[actors]]
name = "garbage"
script = "scripts/garbage.py"

[[actors]]
name = "sleepy"
script = "scripts/sleepy.py"
timeout_s = 1
max_retries = 0
"""


@pytest.mark.timeout(120)
def test_failures_are_classified_and_the_supervisor_keeps_going(
    public_tmp: Path, supervisors: Start
) -> None:
    write_script(
        public_tmp, "exit3.py", "import sys\nprint('boom', file=sys.stderr)\nsys.exit(3)\n"
    )
    write_script(public_tmp, "garbage.py", "print('this is not json')\n")
    write_script(public_tmp, "sleepy.py", "import time\ntime.sleep(60)\n")
    _echo(public_tmp)
    sup = supervisors(FAILING_ACTORS + ECHO_ACTOR)
    with sup.client() as client:
        exit3 = client.submit("exit3", wait=True)
        garbage = client.submit("garbage", wait=True)
        sleepy = client.submit("sleepy", wait=True)
        after = client.submit("echo", {"still": "alive"}, wait=True)
    assert isinstance(exit3, RunOutcome) and isinstance(garbage, RunOutcome)
    assert isinstance(sleepy, RunOutcome) and isinstance(after, RunOutcome)
    assert (exit3.status, exit3.reason, exit3.exit_code) == ("failed_permanent", "exit_code", 3)
    assert "boom" in exit3.stderr_tail
    assert (garbage.status, garbage.reason) == ("failed_permanent", "invalid_output")
    assert (sleepy.status, sleepy.reason) == ("failed_retryable", "timeout")
    assert after.succeeded


@pytest.mark.timeout(120)
def test_cli_submit_prints_the_json_outcome_and_exits_by_status(
    public_tmp: Path, supervisors: Start
) -> None:
    _echo(public_tmp)
    write_script(public_tmp, "exit3.py", "import sys\nsys.exit(3)\n")
    sup = supervisors(ECHO_ACTOR + '[[actors]]\nname = "exit3"\nscript = "scripts/exit3.py"\n')
    ok = sup.cli("submit", "echo", "--input", '{"a": [1, 2]}', "--wait", "--json")
    assert ok.returncode == 0, ok.stderr
    outcome = orjson.loads(ok.stdout)
    required = {"run_id", "actor", "status", "reason", "exit_code", "signal", "output",
                "stderr_tail", "duration_ms", "code_sha256"}  # fmt: skip
    assert required <= set(outcome)
    assert outcome["output"] == {"echo": {"a": [1, 2]}}
    failed = sup.cli("submit", "exit3", "--wait", "--json")
    assert failed.returncode == 1
    assert orjson.loads(failed.stdout)["status"] == "failed_permanent"
    unknown = sup.cli("submit", "nope", "--wait")
    assert unknown.returncode == 5
    assert "unknown_actor" in unknown.stderr and "echo" in unknown.stderr
    bad_json = sup.cli("submit", "echo", "--input", "{nope")
    assert bad_json.returncode == 2 and "--input: not valid JSON" in bad_json.stderr
    accepted = sup.cli("submit", "echo", "--json")
    assert accepted.returncode == 0 and len(orjson.loads(accepted.stdout)["run_id"]) == 32


@pytest.mark.timeout(120)
def test_status_and_history(public_tmp: Path, supervisors: Start) -> None:
    _echo(public_tmp)
    sup = supervisors(
        ECHO_ACTOR + '\n[[actors]]\nname = "ticker"\nscript = "scripts/echo.py"\n'
        'schedule = { type = "interval", seconds = 3600 }\n'
    )
    with sup.client() as client:
        for i in range(3):
            client.submit("echo", {"i": i}, wait=True)
    status = orjson.loads(sup.cli("status", "--json").stdout)
    assert len(status["workers"]) == 2
    for worker in status["workers"]:
        assert worker["ready"] and psutil.pid_exists(worker["pid"])
        assert psutil.Process(worker["pid"]).ppid() == sup.proc.pid
    assert sum(w["runs_done"] for w in status["workers"]) >= 4  # 3 echoes + the ticker's first
    actors = {a["name"]: a for a in status["actors"]}
    assert actors["echo"]["next_due"] is None
    assert actors["ticker"]["next_due_ts"] > time.time() + 3000
    text = sup.cli("status")
    assert text.returncode == 0 and "ticker" in text.stdout and "SLOT" in text.stdout

    history = sup.cli("history", "echo", "--json")
    runs = orjson.loads(history.stdout)
    assert [r["input"]["i"] for r in runs] == [2, 1, 0]  # newest first
    assert all(r["status"] == "succeeded" for r in runs)
    assert len(orjson.loads(sup.cli("history", "--limit", "2", "--json").stdout)) == 2


@pytest.mark.timeout(120)
def test_schedules_fire_on_their_own(public_tmp: Path, supervisors: Start) -> None:
    _echo(public_tmp)
    sup = supervisors(
        """
        [[actors]]
        name = "every-second"
        script = "scripts/echo.py"
        schedule = { type = "Cron", expression = "* * * * * *" }
        input = { from = "cron" }

        [[actors]]
        name = "interval"
        script = "scripts/echo.py"
        schedule = { type = "interval", seconds = 1 }

        [[actors]]
        name = "at-start"
        script = "scripts/echo.py"
        schedule = { type = "immediate" }
        """
    )
    store = sup.store()
    try:

        def fired() -> bool:
            runs = store.list_runs(limit=100)
            by_actor = {r.actor: [x for x in runs if x.actor == r.actor] for r in runs}
            return (
                len(by_actor.get("every-second", [])) >= 3
                and len(by_actor.get("interval", [])) >= 3
                and len(by_actor.get("at-start", [])) == 1
            )

        wait_for(fired, 30, "scheduled runs")
        runs = store.list_runs(actor="every-second")
        assert all(r.trigger == "schedule" and r.scheduled_for for r in runs)
        done = [r for r in runs if r.status == "succeeded"]
        assert done and orjson.loads(done[0].output_json or "") == {"echo": {"from": "cron"}}
        assert all(r.scheduled_for == int(r.scheduled_for) for r in runs)  # on the second
    finally:
        store.close()


@pytest.mark.timeout(120)
def test_many_clients_submit_concurrently(public_tmp: Path, supervisors: Start) -> None:
    _echo(public_tmp)
    sup = supervisors(ECHO_ACTOR)
    outcomes: list[RunOutcome] = []
    errors: list[BaseException] = []

    def client_thread(n: int) -> None:
        try:
            with sup.client(timeout_s=60) as client:
                for i in range(15):
                    result = client.submit("echo", {"client": n, "i": i}, wait=True)
                    assert isinstance(result, RunOutcome)
                    assert result.output == {"echo": {"client": n, "i": i}}
                    outcomes.append(result)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client_thread, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len({o.run_id for o in outcomes}) == 120
    assert all(o.succeeded for o in outcomes)
    assert sup.stop() == 0
    store = sup.store()
    try:
        assert len(store.list_runs(actor="echo", limit=1000)) == 120
    finally:
        store.close()


@pytest.mark.timeout(120)
def test_a_full_queue_answers_busy(public_tmp: Path, supervisors: Start) -> None:
    write_script(public_tmp, "slow.py", "import time, json\ntime.sleep(3)\nprint('{}')\n")
    sup = supervisors(
        '[[actors]]\nname = "slow"\nscript = "scripts/slow.py"\n',
        workers=1,
        settings="queue_size = 2\n",
    )
    answers: list[object] = []
    with sup.client() as client:
        for _ in range(6):
            try:
                answers.append(client.submit("slow"))
            except ClientError as exc:
                answers.append(exc.code)
    accepted = [a for a in answers if isinstance(a, Accepted)]
    assert "busy" in answers
    assert 2 <= len(accepted) <= 3  # one may already be on the worker, two wait in the queue


@pytest.mark.timeout(120)
def test_malformed_control_messages_get_error_replies(public_tmp: Path, supervisors: Start) -> None:
    _echo(public_tmp)
    sup = supervisors(ECHO_ACTOR)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(sup.endpoint)
    try:
        cases = [
            [b"not json at all"],
            [b'{"v": 1, "type": "submit", "id": "a1"'],  # truncated
            [b'{"v": 9, "type": "status", "id": "a2"}'],
            [b'{"v": 1, "type": "explode", "id": "a3"}'],
            [b'{"v": 1, "type": "submit", "id": "a4", "actor": 5}'],
            [b'{"v": 1, "type": "run", "id": "a5"}'],  # a worker message on the control socket
            [b"one", b"two"],  # wrong frame count
            [os.urandom(300)],
        ]
        for frames in cases:
            sock.send_multipart(frames)
            assert sock.poll(10_000), f"no reply to {frames!r}"
            reply = orjson.loads(sock.recv_multipart()[-1])
            assert reply["ok"] is False and reply["error"] == "bad_request", reply
            assert reply["message"]
        sock.send(b'{"v": 1, "type": "submit", "id": "a4", "actor": 5}')
        assert sock.poll(10_000)
        reply = orjson.loads(sock.recv())
        assert reply["id"] == "a4" and "submit.actor" in reply["message"]
    finally:
        sock.close()
    req = ctx.socket(zmq.REQ)  # an envelope-framed client works too
    req.setsockopt(zmq.LINGER, 0)
    req.connect(sup.endpoint)
    try:
        req.send(b'{"v": 1, "type": "status", "id": "r1"}')
        assert req.poll(10_000)
        assert orjson.loads(req.recv())["kind"] == "status"
    finally:
        req.close()
    with sup.client() as client:
        outcome = client.submit("echo", {"ok": True}, wait=True)
        assert isinstance(outcome, RunOutcome) and outcome.succeeded
        assert client.status()["counters"]["bad_requests"] == 9


@pytest.mark.timeout(120)
def test_sigterm_lets_a_run_in_flight_finish(public_tmp: Path, supervisors: Start) -> None:
    write_script(public_tmp, "two.py", "import time\ntime.sleep(2)\nprint('{\"done\": true}')\n")
    sup = supervisors('[[actors]]\nname = "two"\nscript = "scripts/two.py"\n')
    with sup.client() as client:
        accepted = client.submit("two")
        assert isinstance(accepted, Accepted)
        wait_for(lambda: client.status()["queue"]["in_flight"] == 1, 20, "the run to start")
    started = time.monotonic()
    assert sup.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 9  # finished well within the 10 s grace
    store = sup.store()
    try:
        (run,) = store.list_runs(run_id=accepted.run_id)
        assert run.status == "succeeded" and orjson.loads(run.output_json or "") == {"done": True}
    finally:
        store.close()


@pytest.mark.timeout(120)
def test_sigterm_kills_a_run_past_the_grace_period(public_tmp: Path, supervisors: Start) -> None:
    write_script(public_tmp, "forever.py", "import time\ntime.sleep(600)\n")
    sup = supervisors(
        '[[actors]]\nname = "forever"\nscript = "scripts/forever.py"\nmax_retries = 0\n',
        settings="shutdown_grace_s = 1\nkill_grace_s = 1\n",
    )
    with sup.client() as client:
        accepted = client.submit("forever")
        assert isinstance(accepted, Accepted)
        status = wait_for(
            lambda: (
                (s := client.status())["queue"]["in_flight"] == 1
                and any(w["child_pid"] for w in s["workers"])
                and s
            ),
            20,
            "the run to start",
        )
    child = next(w["child_pid"] for w in status["workers"] if w["child_pid"])
    started = time.monotonic()
    assert sup.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 30
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    store = sup.store()
    try:
        (run,) = store.list_runs(run_id=accepted.run_id)
        assert (run.status, run.reason) == ("failed_retryable", "shutdown")
    finally:
        store.close()


@pytest.mark.timeout(180)
def test_the_bundled_examples_run(public_tmp: Path, supervisors: Start) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    for path in sorted(examples.rglob("*")):
        if "state" in path.parts or "__pycache__" in path.parts:
            continue
        target = public_tmp / path.relative_to(examples)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(0o755)
        else:
            target.write_bytes(path.read_bytes())
            target.chmod(0o755 if path.stat().st_mode & 0o111 else 0o644)  # loadavg.sh runs
    sup = supervisors(config=public_tmp / "supervisor.toml")
    store = sup.store()
    try:

        def ran() -> set[str]:
            done = {r.actor for r in store.list_runs(limit=200) if r.is_final}
            return (
                done
                if {"warmup", "greeter", "disk-report", "heartbeat", "broken"} <= done
                else set()
            )

        wait_for(ran, 60, "every example actor to run once")
        by_actor = {r.actor: r for r in reversed(store.list_runs(limit=200)) if r.is_final}
        assert by_actor["greeter"].status == "succeeded"  # imports phrases.py from its folder
        assert by_actor["greeter"].code_source == "database"  # exec_mode = "database"
        assert orjson.loads(by_actor["greeter"].output_json or "") == {"message": "Hello, world!"}
        assert by_actor["heartbeat"].status == "succeeded", by_actor["heartbeat"]  # exec mode
        assert by_actor["broken"].status == "failed_permanent"
        assert all(by_actor[a].status == "succeeded" for a in ("warmup", "disk-report"))
    finally:
        store.close()
    with sup.client() as client:
        outcome = client.submit("greeter", {"name": "Ada", "language": "de"}, wait=True)
        assert isinstance(outcome, RunOutcome) and outcome.output == {"message": "Hallo, Ada!"}
        load = client.submit("load", {}, wait=True)  # the shell command actor
        assert isinstance(load, RunOutcome) and load.succeeded, load
        assert set(load.output) == {"load1", "load5", "load15", "uptime_s"}
    assert sup.stop() == 0
    log = sup.log()
    # a failure gets a line of its own; successes are counted in the summary line at stop
    assert "run failed_permanent actor=broken" in log and "run succeeded" not in log
    assert re.search(r"attempts finished: .*greeter succeeded=\d", log), log


@pytest.mark.timeout(60)
def test_a_password_on_the_command_line_is_warned_about_never_logged(tmp_path: Path) -> None:
    """Any local user (scripts too) reads /proc/PID/cmdline; the environment is the way."""
    url = "postgresql://actors:hunter2@127.0.0.1:1/actors"
    env = {**os.environ, "ACTOR_SUPERVISOR_DATABASE_WAIT_S": "0"}
    command = [sys.executable, "-m", "supervisor.cli", "start", "--workers", "1"]
    flag = subprocess.run(
        [*command, "--database", url], capture_output=True, text=True, timeout=50,
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert flag.returncode == 4  # nothing listens on port 1
    assert "WARNING" in flag.stderr and "carries a password" in flag.stderr, flag.stderr
    assert "actors:***@127.0.0.1:1" in flag.stderr and "hunter2" not in flag.stderr
    environment = subprocess.run(
        command, capture_output=True, text=True, timeout=50, cwd=tmp_path,
        env={**env, "ACTOR_SUPERVISOR_DATABASE": url},
    )  # fmt: skip
    assert environment.returncode == 4
    assert "carries a password" not in environment.stderr and "hunter2" not in environment.stderr
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


def test_start_up_makes_what_an_older_version_left_readable_private(tmp_path: Path) -> None:
    from supervisor.config import load_config
    from supervisor.statedir import secure_state

    state, outside = tmp_path / "state", tmp_path / "spool"
    (state / "spool").mkdir(parents=True)
    outside.mkdir()
    files = [state / "actor-supervisor.db", state / "actor-supervisor.db-wal", outside / "1.log"]
    files.append(state / "spool" / "lock")
    for path in files:
        path.write_text("x")
        path.chmod(0o644)
    for folder in (tmp_path, state, state / "spool", outside):
        folder.chmod(0o755)
    config = tmp_path / "supervisor.toml"
    config.write_text('[supervisor]\nspool_dir = "spool"\n')
    previous = os.umask(0o022)
    try:
        assert secure_state(load_config(config, environ={})) == state
        assert os.umask(0o022) == 0o077
    finally:
        os.umask(previous)
    assert {str(p): p.stat().st_mode & 0o777 for p in files} == dict.fromkeys(
        map(str, files), 0o600
    )
    assert (state.stat().st_mode & 0o777, (state / "spool").stat().st_mode & 0o777) == (
        0o700,
        0o700,
    )
    assert outside.stat().st_mode & 0o777 == 0o755  # the operator's folder: only our files change


@pytest.mark.timeout(120)
def test_preload_reaches_fork_mode_scripts_and_a_module_that_fails_is_logged(
    public_tmp: Path, supervisors: Start
) -> None:
    seen = "{m: m in sys.modules for m in ('colorsys', 'wave')}"
    write_script(public_tmp, "seen.py", f"import json, sys\nprint(json.dumps({seen}))\n")
    sup = supervisors(
        '[[actors]]\nname = "seen"\nscript = "scripts/seen.py"\n',
        settings='preload = ["colorsys", "no_such_module_here"]\n',
        workers=1,
    )
    with sup.client() as client:
        outcome = client.submit("seen", wait=True)
    assert isinstance(outcome, RunOutcome) and outcome.succeeded, outcome
    assert outcome.output == {"colorsys": True, "wave": False}
    wait_for(
        lambda: "preload: no_such_module_here: ModuleNotFoundError" in sup.log(),
        10,
        "the worker's warning",
    )
