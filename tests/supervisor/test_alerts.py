"""Alerts end to end: a real supervisor, a real HTTP receiver on 127.0.0.1, the real outbox.

Signatures, delivery once a dead receiver comes back, no duplicate after a restart, folding of
repeats, ``alert_after_failures``, breaker pauses and command destinations.
"""

import hashlib
import hmac
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from supervisor.alerts.records import AlertRecord
from tests.helpers import wait_for
from tests.supervisor.harness import RunningSupervisor, write_script
from tests.supervisor.receiver import Receiver

Start = Callable[..., RunningSupervisor]
# Alert commands run as the sandbox user, who may not be able to run a virtualenv's python.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable

FAILING = """\
    import sys
    sys.stdin.read()
    print("marker-of-the-failure", file=sys.stderr)
    sys.exit(3)
"""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.stop()


def _alerts(sup: RunningSupervisor) -> list[AlertRecord]:
    store = sup.store()
    try:
        return store.list_alerts(limit=1000)
    finally:
        store.close()


def _fail_once(sup: RunningSupervisor, actor: str = "broken") -> str:
    with sup.client() as client:
        outcome = client.submit(actor, {}, wait=True)
    assert outcome.status == "failed_permanent"
    return outcome.run_id


def _config(url: str, extra: str = "", actor_extra: str = "") -> str:
    return f"""
        [[actors]]
        name = "broken"
        script = "scripts/failing.py"
        max_retries = 0
        max_consecutive_failures = 0
        {actor_extra}

        [[alerts]]
        name = "ops"
        webhook = "{url}"
        events = ["run_failed"]
        retry_backoff_s = 0.2
        retry_backoff_max_s = 0.5
        {extra}
    """


@pytest.mark.timeout(120)
def test_a_final_failure_is_posted_signed_with_the_run_details(
    public_tmp: Path, supervisors: Start, receiver: Receiver
) -> None:
    write_script(public_tmp, "failing.py", FAILING)
    receiver.start()
    sup = supervisors(
        _config(receiver.url, extra='secret = "s3cret"\nheaders = { X-Team = "ops" }'),
        settings="public_url = 'https://supervisor.example/'\n",
    )
    run_id = _fail_once(sup)
    [got] = wait_for(receiver.requests, 30, "the alert to arrive")
    expected = hmac.new(b"s3cret", got.body, hashlib.sha256).hexdigest()
    assert got.headers["X-Actor-Supervisor-Signature"] == f"sha256={expected}"
    assert got.headers["X-Team"] == "ops"
    payload = got.payload
    assert payload["event"] == "run_failed"
    assert (payload["actor"], payload["run_id"], payload["attempt"]) == ("broken", run_id, 1)
    assert (payload["status"], payload["reason"]) == ("failed_permanent", "exit_code")
    assert "marker-of-the-failure" in payload["stderr_tail"]
    assert len(payload["code_version"]["sha256"]) == 64
    assert payload["link"] == f"https://supervisor.example/runs/{run_id}"
    assert (payload["count"], payload["folded"]) == (1, False)
    wait_for(lambda: [a.status for a in _alerts(sup)] == ["delivered"], 10, "delivered recorded")
    listed = sup.cli("alerts", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = orjson.loads(listed.stdout)
    assert (row["destination"], row["status"], row["attempts"]) == ("ops", "delivered", 1)
    assert sup.stop() == 0
    assert "ERROR" not in sup.log()


@pytest.mark.timeout(180)
def test_a_dead_receiver_gets_the_alert_when_it_is_back_and_a_restart_sends_nothing_twice(
    public_tmp: Path, supervisors: Start, receiver: Receiver
) -> None:
    write_script(public_tmp, "failing.py", FAILING)
    receiver.reserve_port()  # nothing listens there yet
    sup = supervisors(_config(receiver.url))
    first = _fail_once(sup)
    wait_for(
        lambda: [a for a in _alerts(sup) if a.attempts >= 2 and a.last_error],
        30,
        "failed attempts against the dead receiver",
    )
    receiver.start()
    [got] = wait_for(receiver.requests, 30, "the alert once the receiver is back")
    assert got.payload["run_id"] == first
    wait_for(lambda: [a.status for a in _alerts(sup)] == ["delivered"], 10, "delivered recorded")
    assert sup.stop() == 0

    again = supervisors(config=sup.config_path)
    second = _fail_once(again)
    # The sender delivers in due order, so a re-sent first alert would arrive before this one.
    wait_for(lambda: len(receiver.requests()) >= 2, 30, "the second run's alert")
    assert [r.payload["run_id"] for r in receiver.requests()] == [first, second]
    assert again.stop() == 0


@pytest.mark.timeout(180)
def test_repeats_fold_into_one_alert_with_a_count(
    public_tmp: Path, supervisors: Start, receiver: Receiver
) -> None:
    write_script(public_tmp, "failing.py", FAILING)
    receiver.start()
    sup = supervisors(_config(receiver.url), settings="alert_repeat_s = 3\n")
    runs = [_fail_once(sup) for _ in range(4)]
    wait_for(lambda: len(receiver.requests()) >= 2, 30, "two alerts")
    first, folded = receiver.requests()
    assert (first.payload["run_id"], first.payload["count"], first.payload["folded"]) == (
        runs[0], 1, False,
    )  # fmt: skip
    assert (folded.payload["run_id"], folded.payload["count"]) == (runs[-1], 3)
    assert folded.payload["folded"] is True
    rows = _alerts(sup)
    assert sorted(r.count for r in rows) == [1, 3]  # four failures, two outbox rows
    assert sup.stop() == 0


@pytest.mark.timeout(180)
def test_alert_after_failures_the_breaker_pause_and_recovery_through_a_command(
    public_tmp: Path, supervisors: Start
) -> None:
    write_script(public_tmp, "failing.py", FAILING)
    inbox = public_tmp / "inbox"
    inbox.mkdir()
    inbox.chmod(0o777)  # the command runs as the sandbox user when the tests run as root
    writer = write_script(
        public_tmp,
        "receive.py",
        f"""\
        import json, os, sys, uuid
        alert = json.load(sys.stdin)
        name = os.path.join({str(inbox)!r}, uuid.uuid4().hex)
        with open(name + ".tmp", "w") as out:
            json.dump(alert, out)
        os.rename(name + ".tmp", name + ".json")  # the test never reads half a file
        """,
    )
    sup = supervisors(
        f"""
        [[actors]]
        name = "broken"
        script = "scripts/failing.py"
        max_retries = 0
        max_consecutive_failures = 3
        alert_after_failures = 2

        [[alerts]]
        name = "script"
        command = ["{SYSTEM_PYTHON}", "{writer}"]
        retry_backoff_s = 0.2
        events = ["run_failed", "actor_paused", "actor_recovered"]
        """,
        settings="alert_repeat_s = 0\n",
    )

    def got() -> list[dict[str, object]]:
        return [orjson.loads(path.read_bytes()) for path in inbox.glob("*.json")]

    _fail_once(sup)
    _fail_once(sup)
    wait_for(lambda: len(got()) == 1, 30, "the alert of the second failure")
    assert [(a["event"], a["failures"]) for a in got()] == [("run_failed", 2)]
    _fail_once(sup)  # the third failure opens the breaker
    wait_for(lambda: len(got()) == 3, 30, "the third failure's alert and the pause")
    paused = next(a for a in got() if a["event"] == "actor_paused")
    assert (paused["paused_by"], paused["failures"]) == ("breaker", 3)
    assert "exit" in str(paused["error"])
    write_script(public_tmp, "failing.py", "import sys\nsys.stdin.read()\nprint('{}')\n")
    with sup.client() as client:
        client.resume("broken")
        assert client.submit("broken", {}, wait=True).status == "succeeded"
    wait_for(lambda: len(got()) == 4, 30, "the recovery alert")
    recovered = next(a for a in got() if a["event"] == "actor_recovered")
    assert recovered["actor"] == "broken"
    assert sup.stop() == 0
