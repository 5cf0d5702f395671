"""Hostile scripts reading other processes through /proc: every command line is world-readable
there, the supervisor's included, and an operator may start it with a secret on it (``--database
postgresql://user:password@...``); another actor's command runs with its arguments in view."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.hostile.common import output_of
from tests.supervisor.harness import RunningSupervisor, write_script

Start = Callable[..., RunningSupervisor]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs are another user only as root")

MARKER = "s3cret-on-the-command-line"

SPY = """\
import json, os
seen, secrets, root_owned = 0, [], 0
for name in os.listdir("/proc"):
    if not name.isdigit():
        continue
    seen += 1
    try:
        with open(f"/proc/{name}/cmdline", "rb") as f:
            line = f.read().replace(b"\\0", b" ").decode(errors="replace")
        root_owned += os.stat(f"/proc/{name}").st_uid == 0
    except OSError:
        continue
    if "MARKER" in line:
        secrets.append(line)
print(json.dumps({"seen": seen, "secrets": secrets, "root_owned": root_owned,
                  "self": os.path.isdir(f"/proc/{os.getpid()}")}))
""".replace("MARKER", MARKER)


@as_root
@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_a_run_sees_no_other_users_process_in_proc(
    public_tmp: Path, supervisors: Start, mode: str
) -> None:
    """The supervisor's command line carries a marker (a database file's folder); the run
    lists /proc: it finds only its own processes, not the marker nor anything of root's."""
    write_script(public_tmp, "spy.py", SPY)
    state = public_tmp / MARKER
    state.mkdir()
    actors = f'[[actors]]\nname = "spy"\nscript = "scripts/spy.py"\nmode = "{mode}"\n'
    sup = supervisors(actors, args=("--database", f"sqlite:{state}/store.db"))
    assert MARKER in Path(f"/proc/{sup.proc.pid}/cmdline").read_text()  # there to be found
    with sup.client() as client:
        found = output_of(client.submit("spy", {}, wait=True))
    assert found["self"] and found["seen"] >= 1, found
    assert found["secrets"] == [], found
    assert found["root_owned"] == 0, found
    assert sup.status()["supervisor"]["protections"]["hidden_processes"] is True
