"""A hostile script against the supervisor's own checks as the runs' user.

Root checks what runs could reach by forking a child that becomes a run's uid (at start-up, at
each reload, in ``check``). A run may signal every process of its own uid: ``kill(-1)`` is
what the sandbox itself does as a run takes its uid. A check under a uid some run has could so
be killed half-way, and every reload refused while such a run lasts.
"""

import os
import signal
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.helpers import wait_for
from tests.supervisor.harness import RunningSupervisor, write_script

Start = Callable[..., RunningSupervisor]

KILLER = """\
    import json, os, signal, sys, time

    stop = json.load(sys.stdin)["stop"]
    kills = 0
    deadline = time.monotonic() + 60
    while not os.path.exists(stop) and time.monotonic() < deadline:
        try:
            os.kill(-1, signal.SIGKILL)  # every process of this uid but this one
            kills += 1
        except ProcessLookupError:
            pass
        time.sleep(0.001)
    print(json.dumps({"kills": kills}))
"""


@pytest.mark.timeout(180)
@pytest.mark.skipif(os.geteuid() != 0, reason="runs have uids of their own only as root")
def test_a_run_killing_every_process_of_its_uid_cannot_make_a_reload_fail(
    public_tmp: Path, supervisors: Start
) -> None:
    write_script(public_tmp, "killer.py", KILLER)
    write_script(public_tmp, "later.py", "print('{}')\n")
    sup = supervisors('[[actors]]\nname = "killer"\nscript = "scripts/killer.py"\n', workers=1)
    stop = public_tmp / "stop-killing"
    with sup.client() as client:
        client.submit("killer", {"stop": str(stop)})
        wait_for(lambda: sup.status()["queue"]["in_flight"] == 1, 30, "the killer to run")
        config = sup.config_path.read_text()
        sup.config_path.write_text(
            config + '[[actors]]\nname = "later"\nscript = "scripts/later.py"\n'
        )
        sup.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: "configuration reloaded" in sup.log() or "configuration rejected" in sup.log(),
            60,
            "the reload's verdict",
        )
        assert "configuration rejected" not in sup.log(), sup.log()
        assert sup.status()["queue"]["in_flight"] == 1  # the killer was at it all along
    stop.touch()
    wait_for(lambda: sup.status()["queue"]["in_flight"] == 0, 30, "the killer to stop")
    assert "later" in {actor["name"] for actor in sup.status()["actors"]}
    store = sup.store()
    try:
        (run,) = store.list_runs(actor="killer", limit=10)
    finally:
        store.close()
    assert run.status == "succeeded", run
    assert orjson.loads(run.output_json or "{}")["kills"] > 0, run  # it killed, all along
