"""Hostile scripts and the kernel's keyrings: a run inherits its parent's session keyring,
where root (a login, ``keyctl add ... @s``) may keep secrets; and a uid's user keyrings and
persistent keyring outlive its processes, where one run could leave keys for the next run given
the same uid -- another actor's."""

import ctypes
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import join_new_session_keyring
from tests.hostile.common import output_of
from tests.supervisor.harness import RunningSupervisor, write_script
from workers.sandbox import SYS_KEYCTL

Start = Callable[..., RunningSupervisor]
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="runs are another user only as root"),
    pytest.mark.skipif(SYS_KEYCTL is None, reason="keyctl's number unknown on this machine"),
]

KEYS = """\
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
KEYCTL = SYS_KEYCTL
ADD_KEY = KEYCTL - 2  # add_key, request_key, keyctl: consecutive in both tables
RINGS = {"session": -3, "user": -4, "user_session": -5}

def find(ring, name):
    key = libc.syscall(KEYCTL, 10, ring, b"user", name.encode(), 0)  # KEYCTL_SEARCH
    if key < 0:
        return None
    buf = ctypes.create_string_buffer(256)
    size = libc.syscall(KEYCTL, 11, key, buf, 256)  # KEYCTL_READ
    return buf.raw[:size].decode() if size >= 0 else "unreadable"

rings = dict(RINGS)
persistent = libc.syscall(KEYCTL, 22, -1, -3)  # KEYCTL_GET_PERSISTENT, linked to our session
if persistent > 0:
    rings["persistent"] = persistent
step = json.load(sys.stdin)["step"]
found = {}
for label, ring in rings.items():
    for name in ("planted-" + label, "root-session-secret"):
        if (value := find(ring, name)) is not None:
            found[f"{label}/{name}"] = value
    if step == "plant":
        data = b"left by an earlier run"
        libc.syscall(ADD_KEY, b"user", ("planted-" + label).encode(), data, len(data), ring)
print(json.dumps({"uid": os.getuid(), "found": found, "rings": sorted(rings)}))
""".replace("SYS_KEYCTL", str(SYS_KEYCTL))

ACTORS = "".join(
    f'[[actors]]\nname = "{name}"\nscript = "scripts/keys.py"\n' for name in ("first", "second")
)  # two actors, one script: runs of different actors


def _add_to_session_keyring(name: str, secret: bytes) -> None:
    """A secret in this test process's own new session keyring (see join_new_session_keyring)."""
    assert SYS_KEYCTL is not None and join_new_session_keyring() is not None
    libc = ctypes.CDLL(None, use_errno=True)
    added = libc.syscall(SYS_KEYCTL - 2, b"user", name.encode(), secret, len(secret), -3)
    assert added > 0, ctypes.get_errno()


def test_runs_share_no_keyring_with_root_or_each_other(
    public_tmp: Path, supervisors: Start
) -> None:
    _add_to_session_keyring("root-session-secret", b"root's own")
    write_script(public_tmp, "keys.py", KEYS)
    sup = supervisors(ACTORS, workers=1)  # one slot: the second run gets the first's uid back
    with sup.client() as client:
        planted = output_of(client.submit("first", {"step": "plant"}, wait=True))
        looked = output_of(client.submit("second", {"step": "look"}, wait=True))
    assert planted["found"] == {}, planted  # root's session keyring is not the run's
    assert looked["uid"] == planted["uid"], (planted, looked)  # else this proves nothing
    assert looked["found"] == {}, looked
    assert {"session", "user", "user_session"} <= set(looked["rings"]), looked
