"""Retries end to end: which outcomes retry, how long each retry waits, what gets recorded.

Every attempt is its own ``runs`` row under the run's id; the scripts count their own starts
(``runlog``), so "retried N times" is what really ran, not only what the store says.
"""

import itertools
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from protocol.client import Accepted, ClientError, ClientTimeout, RunOutcome
from supervisor.records import RunRecord
from tests.helpers import traced_actor, wait_for
from tests.supervisor.harness import ECHO, RunningSupervisor, write_script
from tests.supervisor.runlog import count, trace_dir, traced

Start = Callable[..., RunningSupervisor]


def _attempts(sup: RunningSupervisor, run_id: str) -> list[RunRecord]:
    store = sup.store()
    try:
        return sorted(store.list_runs(run_id=run_id), key=lambda r: r.attempt)
    finally:
        store.close()


TEMPFAIL_THRICE = traced("finish(75 if COUNT < 4 else 0)\n")


@pytest.mark.timeout(120)
def test_exit_75_is_retried_with_growing_delays_then_succeeds(
    public_tmp: Path, supervisors: Start
) -> None:
    trace = trace_dir(public_tmp)
    write_script(public_tmp, "tempfail.py", TEMPFAIL_THRICE)
    write_script(public_tmp, "echo.py", ECHO)
    base = 0.25
    sup = supervisors(
        f"""
        [[actors]]
        name = "tempfail"
        script = "scripts/tempfail.py"
        env = {{ TRACE_DIR = "{trace}" }}
        max_retries = 3
        retry_backoff_s = {base}
        retry_backoff_max_s = 10
        retry_jitter = false

        [[actors]]
        name = "echo"
        script = "scripts/echo.py"
        """
    )
    waiting = subprocess.Popen(
        [sys.executable, "-m", "supervisor.cli", "submit", "tempfail", "--wait", "--json",
         "--config", str(sup.config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=sup.folder,
    )  # fmt: skip
    store = sup.store()
    try:
        first = wait_for(
            lambda: [r for r in store.list_runs(actor="tempfail") if r.is_final],
            30,
            "the first attempt to fail",
        )
    finally:
        store.close()
    with sup.client() as client:  # a run of another actor queued between the attempts
        other = client.submit("echo", {"between": True}, wait=True)
    assert isinstance(other, RunOutcome) and other.succeeded
    stdout, stderr = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, stderr

    outcome = orjson.loads(stdout)  # submit --wait: the final attempt, after every retry
    run_id = first[0].run_id
    assert outcome["run_id"] == run_id
    assert (outcome["status"], outcome["attempt"], outcome["attempts"]) == ("succeeded", 4, 4)
    assert outcome["output"] == {"count": 4, "attempt": 4}
    assert count(trace, run_id) == 4  # the script really ran four times

    attempts = _attempts(sup, run_id)
    assert [(r.attempt, r.status) for r in attempts] == [
        (1, "failed_retryable"), (2, "failed_retryable"), (3, "failed_retryable"),
        (4, "succeeded"),
    ]  # fmt: skip
    assert all(r.exit_code == 75 and r.reason == "exit_code" for r in attempts[:3])
    assert [r.trigger for r in attempts] == ["submit", "retry", "retry", "retry"]
    assert {r.correlation_id for r in attempts} == {run_id}
    waits = []
    for number, (failed, retry) in enumerate(itertools.pairwise(attempts), 1):
        delay = base * 2 ** (number - 1)  # 0.25, 0.5, 1.0: no jitter
        assert failed.finished_at is not None and retry.started_at is not None
        assert retry.scheduled_for is not None
        assert retry.scheduled_for - failed.finished_at == pytest.approx(delay, abs=0.3)
        waits.append(retry.started_at - failed.finished_at)
        assert delay - 0.05 <= waits[-1] < delay + 3.0, (number, waits)
    assert waits == sorted(waits), waits  # each retry waited longer than the one before

    # `history` shows the run's attempts together, newest first, even with another run queued
    # between its first and second attempt.
    history = sup.cli("history", "--json")
    assert history.returncode == 0, history.stderr
    rows = [(r["run_id"], r["attempt"]) for r in orjson.loads(history.stdout)]
    assert (other.run_id, 1) in rows
    mine = [i for i, (rid, _) in enumerate(rows) if rid == run_id]
    assert mine == list(range(mine[0], mine[0] + 4)), rows
    assert [rows[i][1] for i in mine] == [4, 3, 2, 1]
    one_run = orjson.loads(sup.cli("history", "--run", run_id, "--json").stdout)
    assert [r["attempt"] for r in one_run] == [4, 3, 2, 1]

    # `events` shows the attempts together; each carries retry_count and correlation_id, and
    # the finished ones their duration_ms.
    found = orjson.loads(
        sup.cli("events", "--correlation", run_id, "--json", "--oldest-first").stdout
    )
    assert [e["event_type"] for e in found] == [
        *["run_queued", "run_started", "run_failed"] * 3,
        "run_queued", "run_started", "run_succeeded",
    ]  # fmt: skip
    for event in found:
        meta = event["metadata"]
        assert event["correlation_id"] == meta["correlation_id"] == run_id
        assert meta["retry_count"] == meta["attempt"] - 1
        if event["event_type"] in ("run_failed", "run_succeeded"):
            assert meta["duration_ms"] > 0
            assert meta["will_retry"] is (event["event_type"] == "run_failed")
    assert [e["metadata"]["retry_count"] for e in found[2::3]] == [0, 1, 2, 3]
    newest_first = orjson.loads(sup.cli("events", "--run", run_id[:16], "--json").stdout)
    assert newest_first == list(reversed(found))


SCRIPTS = {
    # asks for a retry in its JSON output, with a non-zero exit, the first time only
    "asks.py": traced(
        'if COUNT == 1:\n    finish(1, {"error": "upstream busy", "retryable": True})\nfinish()\n'
    ),
    "refuses.py": traced('finish(1, {"error": "bad input", "retryable": False})\n'),
    "exit3.py": traced("finish(3)\n"),
    "garbage.py": traced('_note("end")\nprint("not json")\n'),
    "slow-once.py": traced("if COUNT == 1:\n    time.sleep(30)\nfinish()\n"),
}


@pytest.mark.timeout(120)
def test_only_retryable_outcomes_are_retried(public_tmp: Path, supervisors: Start) -> None:
    trace = trace_dir(public_tmp)
    actors = ""
    for name, body in SCRIPTS.items():
        write_script(public_tmp, name, body)
        actors += (
            f'[[actors]]\nname = "{name[:-3]}"\nscript = "scripts/{name}"\n'
            f'env = {{ TRACE_DIR = "{trace}" }}\nmax_retries = 3\nretry_backoff_s = 0.1\n'
            "timeout_s = 1.5\nmax_consecutive_failures = 0\n\n"
        )
    sup = supervisors(actors)
    with sup.client(timeout_s=60) as client:
        outcomes = {name[:-3]: client.submit(name[:-3], wait=True) for name in SCRIPTS}
    got = {
        name: (o.status, o.reason, o.attempts, count(trace, o.run_id))
        for name, o in outcomes.items()
        if isinstance(o, RunOutcome)
    }
    assert got == {
        "asks": ("succeeded", None, 2, 2),
        "refuses": ("failed_permanent", "exit_code", 1, 1),
        "exit3": ("failed_permanent", "exit_code", 1, 1),
        "garbage": ("failed_permanent", "invalid_output", 1, 1),
        "slow-once": ("succeeded", None, 2, 2),  # attempt 1 timed out
    }
    asked = _attempts(sup, outcomes["asks"].run_id)
    assert (asked[0].status, asked[0].error, asked[0].exit_code) == (
        "failed_retryable", "upstream busy", 1,
    )  # fmt: skip
    timed_out = _attempts(sup, outcomes["slow-once"].run_id)
    assert (timed_out[0].status, timed_out[0].reason) == ("failed_retryable", "timeout")
    refused = outcomes["refuses"]
    assert isinstance(refused, RunOutcome) and refused.error == "bad input"
    for name in ("refuses", "exit3", "garbage"):  # a permanent failure is final at once
        (only,) = _attempts(sup, outcomes[name].run_id)
        assert only.status == "failed_permanent"
        store = sup.store()
        try:
            events = store.list_events(aggregate_type="run", aggregate_id=only.run_id)
        finally:
            store.close()
        assert [e.event_type for e in events] == ["run_queued", "run_started", "run_failed"]
        assert events[-1].metadata["will_retry"] is False


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_retry_waiting_for_its_backoff_survives_a_restart(
    public_tmp: Path, supervisors: Start, signum: int
) -> None:
    trace, actor = traced_actor(
        public_tmp,
        "flaky",
        "finish(75 if COUNT == 1 else 0)\n",
        "retry_backoff_s = 4\nretry_jitter = false\n",
    )
    sup = supervisors(actor)
    answers: list[object] = []

    def wait_for_the_outcome() -> None:
        with sup.client(timeout_s=60) as client:
            try:
                answers.append(client.submit("flaky", wait=True))
            except ClientError as exc:
                answers.append(exc)

    if signum == signal.SIGTERM:  # a client waiting on the run hears that it stays queued
        waiter = threading.Thread(target=wait_for_the_outcome)
        waiter.start()
    else:
        with sup.client() as client:
            assert isinstance(client.submit("flaky"), Accepted)
    store = sup.store()
    try:
        retry = wait_for(
            lambda: [r for r in store.list_runs(actor="flaky") if r.attempt == 2],
            30,
            "the second attempt to be queued",
        )[0]
    finally:
        store.close()
    assert retry.status == "queued" and retry.scheduled_for is not None
    stopped_at = time.time()
    assert stopped_at < retry.scheduled_for  # still waiting for its backoff
    assert sup.stop(signum) == (0 if signum == signal.SIGTERM else -signal.SIGKILL)
    if signum == signal.SIGTERM:
        waiter.join(timeout=30)
        assert time.time() < retry.scheduled_for  # the stop did not wait for the backoff
        (answer,) = answers
        assert isinstance(answer, ClientError) and not isinstance(answer, ClientTimeout)
        assert answer.code == "shutting_down" and "stays queued" in str(answer)
    assert [(r.attempt, r.status) for r in _attempts(sup, retry.run_id)] == [
        (1, "failed_retryable"), (2, "queued"),
    ]  # fmt: skip

    again = supervisors(config=sup.config_path, endpoint=sup.endpoint)
    store = again.store()
    try:
        (done,) = wait_for(
            lambda: [
                r for r in store.list_runs(run_id=retry.run_id) if r.attempt == 2 and r.is_final
            ],
            30,
            "the retry to run after the restart",
        )
    finally:
        store.close()
    assert done.status == "succeeded"
    assert done.started_at is not None and done.started_at >= retry.scheduled_for - 0.05
    assert count(trace, retry.run_id) == 2
    assert len(_attempts(again, retry.run_id)) == 2
    assert "re-queued run" in again.log()
