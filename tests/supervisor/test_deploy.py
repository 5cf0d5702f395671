"""What a service manager does to a supervisor: signal its whole process group, and listen on
``$NOTIFY_SOCKET`` (a fake one here: a unix datagram socket the test binds)."""

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.records import RunRecord
from tests.helpers import wait_for
from tests.supervisor.harness import RunningSupervisor, write_script

Start = Callable[..., RunningSupervisor]

SLOW = """\
    import json, sys, time
    json.load(sys.stdin)
    time.sleep(3)
    print(json.dumps({"slept": 3}))
"""


def _runs(sup: RunningSupervisor) -> list[RunRecord]:
    store = sup.store()
    try:
        return store.list_runs(limit=100)
    finally:
        store.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.timeout(120)
def test_a_signal_to_the_whole_process_group_still_lets_runs_finish(
    public_tmp: Path, supervisors: Start, signum: int
) -> None:
    write_script(public_tmp, "slow.py", SLOW)
    sup = supervisors(
        """
        [[actors]]
        name = "slow"
        script = "scripts/slow.py"
        """,
        settings="shutdown_grace_s = 30\n",
        new_session=True,
    )
    assert os.getpgid(sup.proc.pid) == sup.proc.pid
    with sup.client() as client:
        run_id = client.submit("slow", {}).run_id
    wait_for(
        lambda: [r for r in _runs(sup) if r.run_id == run_id and r.status == "running"],
        30,
        "the run to start",
    )
    os.killpg(sup.proc.pid, signum)  # systemd's KillMode=control-group, timeout(1), Ctrl-C
    assert sup.proc.wait(timeout=60) == 0
    log = sup.log()
    [run] = [r for r in _runs(sup) if r.run_id == run_id and r.attempt == 1]
    assert len([r for r in _runs(sup) if r.run_id == run_id]) == 1, log
    assert (run.status, run.attempt) == ("succeeded", 1), log
    assert " ERROR " not in log, log


class FakeNotifySocket:
    """What systemd listens on for Type=notify: a unix datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def received(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def fields(self) -> list[str]:
        return [line for message in self.received() for line in message.splitlines()]


@pytest.mark.timeout(120)
def test_the_supervisor_notifies_ready_watchdog_status_and_stopping(
    public_tmp: Path, supervisors: Start
) -> None:
    write_script(public_tmp, "slow.py", SLOW)
    fake = FakeNotifySocket(public_tmp / "notify.sock")
    try:
        sup = supervisors(
            """
            [[actors]]
            name = "slow"
            script = "scripts/slow.py"
            """,
            env={"NOTIFY_SOCKET": str(fake.path), "WATCHDOG_USEC": "400000"},  # pings every 0.2s
        )
        wait_for(lambda: "READY=1" in fake.fields(), 30, "READY=1")
        ready_at = fake.fields().index("READY=1")
        wait_for(lambda: fake.fields()[ready_at:].count("WATCHDOG=1") >= 5, 30, "watchdog pings")
        wait_for(
            lambda: any(f.startswith("STATUS=2/2 workers ready") for f in fake.fields()),
            30,
            "a status line with every worker ready",
        )
        assert f"MAINPID={sup.proc.pid}" in fake.fields()
        assert "STOPPING=1" not in fake.fields()
        assert sup.stop() == 0
        fields = fake.fields()
        assert "STOPPING=1" in fields
        stopping = fields.index("STOPPING=1")
        assert fields[stopping + 1].startswith("STATUS=stopping (SIGTERM)")
    finally:
        fake.sock.close()
