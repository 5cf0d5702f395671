"""Hostile scripts after the supervisor's own secrets: a configuration file that holds a
password or an alert webhook, a token or key file, readable by the runs' user, hands a run the
store (forge or read every run) or the alert channel; a configuration file it can write hands
it the next start (``run_as = "root"``). Start and check refuse such files."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.hostile.common import check_report, output_of
from tests.supervisor.harness import RunningSupervisor, session_uids, write_script

Start = Callable[..., RunningSupervisor]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs are another user only as root")

THIEF = """\
import json, sys
path = json.load(sys.stdin)["config"]
try:
    with open(path) as f:
        print(json.dumps({"read": f.read()}))
except OSError as exc:
    print(json.dumps({"denied": type(exc).__name__}))
"""

ALERTS = """
[[alerts]]
name = "ops"
webhook = "https://hooks.example/services/T0/B0/s3cret"
events = ["run_failed"]
"""

ACTORS = '[[actors]]\nname = "thief"\nscript = "scripts/thief.py"\n'


@pytest.mark.parametrize("exposed", ["readable", "writable", "token"])
def test_start_and_check_refuse_secrets_the_runs_could_take(
    public_tmp: Path, supervisors: Start, exposed: str
) -> None:
    write_script(public_tmp, "thief.py", THIEF)
    token = public_tmp / "token"
    token.write_text("t" * 32 + "\n")
    token.chmod(0o644 if exposed == "token" else 0o600)
    config = public_tmp / "supervisor.toml"
    uids = session_uids()
    config.write_text(
        f'[supervisor]\nworkers = 1\nrun_as_range = "{uids[0]}-{uids[-1]}"\n'
        + ('http_token_file = "token"\n' if exposed == "token" else "")
        + ACTORS
        + ALERTS
    )
    config.chmod({"readable": 0o644, "writable": 0o666, "token": 0o600}[exposed])
    place = token if exposed == "token" else config
    refused = supervisors(config=config, workers=1, wait_ready=False)
    wait_for(lambda: refused.proc.poll() is not None, 60, "the supervisor to refuse to start")
    assert refused.proc.returncode != 0
    log = refused.log()
    assert "the runs' user can read a secret of this supervisor" in log, log
    assert f"{place}: user" in log
    report = check_report(config)
    assert not report["ok"] and any(f"{place}: user" in p for p in report["problems"]), report
    place.chmod(0o600)
    started = supervisors(config=config, workers=1)
    assert started.status()["workers"]


def test_a_run_cannot_read_the_configuration_it_is_refused_to_read(
    public_tmp: Path, supervisors: Start
) -> None:
    """What start insists on holds from inside: the configuration (root's, 0600) with the
    webhook is out of a real run's reach."""
    write_script(public_tmp, "thief.py", THIEF)
    sup = supervisors(ACTORS + ALERTS)
    assert sup.config_path.stat().st_mode & 0o077 == 0
    with sup.client() as client:
        tried = output_of(client.submit("thief", {"config": str(sup.config_path)}, wait=True))
    assert tried == {"denied": "PermissionError"}, tried
