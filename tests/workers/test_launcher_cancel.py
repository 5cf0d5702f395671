"""Cancelling one run on a real launcher: only that run's process group is killed (TERM, then
KILL after the grace), its result says ``cancelled``, and the launcher's other runs go on."""

import signal
from pathlib import Path

import pytest

from protocol.codec import encode
from tests.helpers import shared_folder, wait_for, write_script
from tests.workers.conftest import collect, is_running, make_run, wait_started
from workers.launcher_handle import Launcher


@pytest.mark.timeout(30)
def test_cancel_kills_one_run_and_its_group_and_spares_the_others(
    launcher: Launcher, public_tmp: Path
) -> None:
    shared = shared_folder(public_tmp)
    # leaves a grandchild in its process group, and ignores TERM: it takes the KILL
    stubborn = write_script(
        public_tmp, "stubborn.py",
        "import os, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n    time.sleep(300)\n    os._exit(0)\n"
        f"open('{shared}/grandchild.tmp', 'w').write(str(pid))\n"
        f"os.rename('{shared}/grandchild.tmp', '{shared}/grandchild')\n"
        "time.sleep(300)\n",
    )  # fmt: skip
    sleeper = write_script(
        public_tmp, "sleeper.py", f"import time; open('{shared}/sleeping', 'w'); time.sleep(300)"
    )
    nap = write_script(public_tmp, "nap.py", "import time; time.sleep(1); print('{}')")
    victim, bystander = make_run(stubborn, "fork"), make_run(nap, "exec")
    polite = make_run(sleeper, "fork")
    for run in (victim, bystander, polite):
        launcher.submit(encode(run))
    wait_started(launcher, {victim.run_id, bystander.run_id, polite.run_id})
    wait_for((shared / "grandchild").exists, 15, "the grandchild to start")
    grandchild = int((shared / "grandchild").read_text())
    # past its set-up (a TERM that lands while the sandbox sets up is lost: KILL follows)
    wait_for((shared / "sleeping").exists, 15, "the sleeper to sleep")

    launcher.cancel(victim.run_id, victim.attempt)
    launcher.cancel(polite.run_id, polite.attempt)
    launcher.cancel(polite.run_id, polite.attempt + 1)  # not an attempt it holds: ignored
    launcher.cancel("no-such-run", 1)
    results = collect(launcher, {victim.run_id, polite.run_id, bystander.run_id}, timeout=15)
    for run, sig in ((victim, signal.SIGKILL), (polite, signal.SIGTERM)):
        result = results[run.run_id]
        assert (result.status, result.reason, result.signal) == ("cancelled", "cancelled", sig)
        assert result.error is not None and "cancelled by an operator" in result.error
    assert not is_running(grandchild)
    assert results[bystander.run_id].status == "succeeded"  # the other runs go on
