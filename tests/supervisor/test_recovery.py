"""Killing things for real: a worker mid-run, a hung worker, the supervisor mid-burst.

The scripts trace every attempt (``runlog``): an exclusive ``flock`` per run proves no two
processes of one run were ever alive at once, and start/end notes show which were killed.
"""

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from protocol.client import Accepted, ClientError, RunOutcome
from supervisor.records import RunRecord
from tests.helpers import traced_actor, wait_for
from tests.supervisor.harness import RunningSupervisor
from tests.supervisor.runlog import assert_never_overlapped, read_traces

Start = Callable[..., RunningSupervisor]

# The first attempt hangs; any later one finishes at once.
STUCK_ONCE = "if ATTEMPT == 1:\n    time.sleep(60)\nfinish()\n"


def _stuck_once(public_tmp: Path, settings: str = "") -> tuple[Path, str]:
    return traced_actor(
        public_tmp, "stuck", STUCK_ONCE, f"retry_backoff_s = 0.2\nretry_jitter = false\n{settings}"
    )


def _held_by(sup: RunningSupervisor, run_id: str, trace: Path | None = None) -> dict[str, Any]:
    """The scoreboard slot of the worker running ``run_id``, once its script is running (with
    ``trace``: once the script has written its start note, so a kill cannot come before it)."""

    def slots() -> list[dict[str, Any]]:
        return [w for w in sup.status()["workers"] if w["current_run"] == run_id and w["child_pid"]]

    if trace is not None:
        wait_for(lambda: read_traces(trace).get(run_id), 30, f"the script of {run_id} to start")
    return wait_for(slots, 30, f"a worker to run {run_id}")[0]


def _submit_in_background(sup: RunningSupervisor, actor: str) -> tuple[threading.Thread, list[Any]]:
    answers: list[Any] = []

    def wait() -> None:
        with sup.client(timeout_s=90) as client:
            answers.append(client.submit(actor, wait=True))

    thread = threading.Thread(target=wait)
    thread.start()
    return thread, answers


def _attempts(sup: RunningSupervisor, run_id: str) -> list[RunRecord]:
    store = sup.store()
    try:
        return sorted(store.list_runs(run_id=run_id), key=lambda r: r.attempt)
    finally:
        store.close()


def _assert_retried_on_the_replacement(
    sup: RunningSupervisor, trace: Path, run_id: str, worker: dict[str, Any]
) -> None:
    first, second = _attempts(sup, run_id)
    assert (first.status, first.reason, first.worker_id) == (
        "failed_retryable", "worker_lost", worker["worker_id"],
    )  # fmt: skip
    assert second.status == "succeeded"
    assert second.worker_id not in (None, worker["worker_id"])  # the replacement: one slot only
    assert second.worker_id.startswith("w0.")
    # The killed worker's script died with it, before the retry started.
    child = worker["child_pid"]
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    traces = read_traces(trace)[run_id]
    assert [(a.attempt, a.end is not None) for a in traces] == [(1, False), (2, True)]
    assert_never_overlapped({run_id: traces})
    replacement = next(w for w in sup.status()["workers"] if w["slot"] == 0)
    assert replacement["ready"] and replacement["pid"] != worker["pid"]


@pytest.mark.timeout(120)
def test_a_worker_killed_mid_run_is_replaced_and_the_run_retried(
    public_tmp: Path, supervisors: Start
) -> None:
    trace, actors = _stuck_once(public_tmp)
    sup = supervisors(actors, workers=1)
    thread, answers = _submit_in_background(sup, "stuck")
    store = sup.store()
    try:
        run_id = wait_for(lambda: store.list_runs(actor="stuck"), 30, "the run")[0].run_id
    finally:
        store.close()
    worker = _held_by(sup, run_id, trace)
    os.kill(worker["pid"], signal.SIGKILL)
    thread.join(timeout=60)
    (outcome,) = answers
    assert isinstance(outcome, RunOutcome)
    assert (outcome.status, outcome.attempt, outcome.attempts) == ("succeeded", 2, 2)
    _assert_retried_on_the_replacement(sup, trace, run_id, worker)
    assert sup.status()["counters"]["worker_deaths"] == 1
    assert f"worker {worker['worker_id']} killed by SIGKILL" in sup.log()


@pytest.mark.timeout(120)
def test_a_hung_worker_is_killed_and_its_run_retried(public_tmp: Path, supervisors: Start) -> None:
    trace, actors = _stuck_once(public_tmp)
    sup = supervisors(actors, workers=1, settings="heartbeat_timeout_s = 2\n")
    with sup.client() as client:
        accepted = client.submit("stuck")
    assert isinstance(accepted, Accepted)
    worker = _held_by(sup, accepted.run_id, trace)
    os.kill(worker["pid"], signal.SIGSTOP)  # alive, but its heartbeat stops
    try:
        store = sup.store()
        try:
            wait_for(
                lambda: any(r.is_final and r.status == "succeeded"
                            for r in store.list_runs(run_id=accepted.run_id)),
                60,
                "the run to be retried and succeed",
            )  # fmt: skip
        finally:
            store.close()
    finally:
        if psutil.pid_exists(worker["pid"]):
            os.kill(worker["pid"], signal.SIGCONT)
    _assert_retried_on_the_replacement(sup, trace, accepted.run_id, worker)
    assert f"killing worker {worker['worker_id']}: no heartbeat for" in sup.log()


BURST = 200


@pytest.mark.timeout(180)
def test_supervisor_killed_mid_burst_loses_no_run_and_never_runs_one_twice_at_once(
    public_tmp: Path, supervisors: Start
) -> None:
    trace, actor = traced_actor(
        public_tmp, "work", "time.sleep(0.2)\nfinish()\n", "retry_backoff_s = 0.1\n"
    )
    sup = supervisors(actor, settings="concurrency = 2\n")
    accepted: list[str] = []

    def burst() -> None:
        with sup.client(timeout_s=5) as client:
            for i in range(BURST):
                try:
                    answer = client.submit("work", {"i": i})
                except ClientError:
                    return  # the supervisor is gone: the rest of the burst was never accepted
                assert isinstance(answer, Accepted)
                accepted.append(answer.run_id)

    thread = threading.Thread(target=burst)
    thread.start()
    wait_for(lambda: len(accepted) >= 80, 60, "the burst to be well under way")
    sup.proc.kill()
    assert sup.proc.wait(timeout=30) == -signal.SIGKILL
    thread.join(timeout=30)
    assert 80 <= len(accepted) < BURST

    again = supervisors(config=sup.config_path, endpoint=sup.endpoint)
    store = again.store()
    try:
        wait_for(
            lambda: (
                not store.unfinished_runs()
                and len({r.run_id for r in store.list_runs(limit=10_000)}) >= len(accepted)
            ),
            120,
            "every run to reach a final outcome",
        )
        rows = store.list_runs(limit=10_000)
    finally:
        store.close()
    by_run: dict[str, list[RunRecord]] = {}
    for row in rows:
        by_run.setdefault(row.run_id, []).append(row)
    assert set(accepted) <= set(by_run)  # every accepted run is recorded...
    for attempts in by_run.values():  # ...with exactly one final outcome
        attempts.sort(key=lambda r: r.attempt)
        assert [r.attempt for r in attempts] == list(range(1, len(attempts) + 1)), attempts
        assert all(r.is_final for r in attempts)
        assert all(
            (r.status, r.reason) == ("failed_retryable", "supervisor_lost") for r in attempts[:-1]
        ), attempts
        assert attempts[-1].status == "succeeded", attempts[-1]

    traces = read_traces(trace)
    assert set(by_run) <= set(traces)
    assert_never_overlapped(traces)
    # The kill caught runs mid-script (a start with no end); each was run again to the end.
    interrupted = {r for r, found in traces.items() if any(a.end is None for a in found)}
    assert interrupted, "no script was running when the supervisor was killed"
    for run_id in interrupted:
        assert traces[run_id][-1].end is not None, traces[run_id]


@pytest.mark.timeout(120)
def test_a_second_stop_signal_cuts_the_grace_period_short(
    public_tmp: Path, supervisors: Start
) -> None:
    trace, actors = _stuck_once(public_tmp, "max_retries = 0")
    sup = supervisors(actors, settings="shutdown_grace_s = 60\nkill_grace_s = 1\n")
    with sup.client() as client:
        accepted = client.submit("stuck")
    assert isinstance(accepted, Accepted)
    _held_by(sup, accepted.run_id, trace)  # its start note written: the kill comes after
    sup.proc.send_signal(signal.SIGTERM)
    sup.wait_for_log("run(s) in flight get 60.0s to finish", 30, "first stop")
    started = time.monotonic()
    assert sup.stop(signal.SIGINT) == 0
    assert time.monotonic() - started < 20  # far less than the 60 s grace
    assert "again: no more grace, killing runs in flight" in sup.log()
    (run,) = _attempts(sup, accepted.run_id)
    assert (run.status, run.reason) == ("failed_retryable", "shutdown")
    assert [a.end for a in read_traces(trace)[accepted.run_id]] == [None]
