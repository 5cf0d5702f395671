"""Hostile scripts making a user namespace: inside one, an unprivileged process has every
capability over what it creates next -- a tmpfs of its own, as big as half the host's memory,
that neither ``tmp_mb`` nor ``memory_mb`` counts. Runs get EPERM (workers/seccomp.py), in fork
mode, in exec mode and as a command actor, while threads and child processes keep working."""

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.hostile.common import output_of
from tests.supervisor.harness import RunningSupervisor, write_script
from workers.seccomp import program

Start = Callable[..., RunningSupervisor]
pytestmark = pytest.mark.skipif(
    program(os.uname().machine) is None, reason="no filter for this architecture"
)

TRY = """\
import ctypes, json, subprocess, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
tried = {"unshare": libc.unshare(0x10000000), "errno": ctypes.get_errno()}  # CLONE_NEWUSER
done = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs none /mnt && echo in"],
                      capture_output=True, text=True)
tried["tool"] = done.stdout.strip() or done.stderr.strip()[-80:]
seen = []
thread = threading.Thread(target=lambda: seen.append("thread"))
thread.start()
thread.join()
tried["thread"] = seen
child = subprocess.run(["sh", "-c", "echo child"], capture_output=True, text=True)
tried["child"] = child.stdout.strip()
print(json.dumps(tried))
"""

SHELL = """\
#!/bin/sh
if unshare -Ur true 2>/dev/null; then echo '{"tool": "in"}'; else echo '{"tool": "denied"}'; fi
"""


@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_a_run_cannot_make_a_user_namespace(
    public_tmp: Path, supervisors: Start, mode: str
) -> None:
    write_script(public_tmp, "try.py", TRY)
    shell = write_script(public_tmp, "try.sh", SHELL)
    shell.chmod(shell.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    actors = (
        f'[[actors]]\nname = "try"\nscript = "scripts/try.py"\nmode = "{mode}"\n'
        '[[actors]]\nname = "shell"\ncommand = ["scripts/try.sh"]\n'
    )
    sup = supervisors(actors, workers=1)
    with sup.client() as client:
        tried = output_of(client.submit("try", {}, wait=True))
        shelled = output_of(client.submit("shell", {}, wait=True))
    assert (tried["unshare"], tried["errno"]) == (-1, 1), tried  # EPERM
    assert tried["tool"] != "in" and "permitted" in tried["tool"], tried
    assert tried["thread"] == ["thread"] and tried["child"] == "child", tried
    assert shelled == {"tool": "denied"}, shelled
    assert sup.status()["supervisor"]["protections"]["no_user_namespaces"] is True
