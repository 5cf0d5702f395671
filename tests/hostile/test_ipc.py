"""Hostile scripts against System V IPC and POSIX message queues, on a real root supervisor.

Those objects live in the kernel, not in any folder, and outlive the process that made them: a
run sharing the host's IPC namespace could leave a shared memory segment, a message queue or a
semaphore set behind for a later run (another uid too, with mode 0666) to read, or fill the
host's IPC limits. Each run has an IPC namespace of its own, which goes with the run.

One supervisor serves the whole module: the attacks are independent runs of their own actors.
"""

import ctypes
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.common import output_of
from tests.supervisor.harness import (
    RunningSupervisor,
    killed_after,
    start_supervisor,
    write_script,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="an IPC namespace per run needs root")

IPC_CREAT = 0o1000
IPC_RMID = 0
O_RDONLY = 0

# What both scripts and this module call: libc through ctypes (the standard library has no
# binding for System V IPC).
LIBC = """\
    import ctypes, errno, json, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]

    class Msg(ctypes.Structure):
        _fields_ = [("mtype", ctypes.c_long), ("text", ctypes.c_char * 64)]

    def failed(result):
        return {"errno": errno.errorcode.get(ctypes.get_errno(), "?")} if result < 0 else None
"""

# Leaves a secret in a shared memory segment, a message queue and a POSIX message queue, and
# creates a semaphore set, all mode 0666 under the key it is given; reports what succeeded.
PLANT = (
    LIBC
    + """\
    key, secret = json.load(sys.stdin)["key"], b"secret of an earlier run"
    made = {}
    shm = libc.shmget(key, 4096, 0o1000 | 0o666)
    if shm >= 0:
        addr = libc.shmat(shm, None, 0)
        ctypes.memmove(addr, secret, len(secret))
    made["shm"] = failed(shm) or shm
    queue = libc.msgget(key, 0o1000 | 0o666)
    if queue >= 0:
        msg = Msg(1, secret)
        libc.msgsnd(queue, ctypes.byref(msg), len(secret), 0o4000)
    made["msg"] = failed(queue) or queue
    sem = libc.semget(key, 1, 0o1000 | 0o666)
    made["sem"] = failed(sem) or sem
    mq = libc.mq_open(f"/actor-hostile-{key}".encode(), os.O_CREAT | os.O_RDWR, 0o666, None)
    made["mq"] = failed(mq) or mq
    print(json.dumps(made))
"""
)

# Looks for what PLANT left, by key and by name, and reads it if found.
SEEK = (
    LIBC
    + """\
    key = json.load(sys.stdin)["key"]
    found = {}
    shm = libc.shmget(key, 0, 0)
    if shm >= 0:
        addr = libc.shmat(shm, None, 0o10000)  # SHM_RDONLY; (void *) -1 when refused
        found["shm"] = ctypes.string_at(addr, 24).decode() if addr != 2**64 - 1 else "no"
    else:
        found["shm"] = failed(shm)
    queue = libc.msgget(key, 0)
    if queue >= 0:
        msg = Msg()
        got = libc.msgrcv(queue, ctypes.byref(msg), 64, 0, 0o4000)  # IPC_NOWAIT
        found["msg"] = msg.text.decode("latin-1") if got > 0 else failed(got)
    else:
        found["msg"] = failed(queue)
    sem = libc.semget(key, 0, 0)
    found["sem"] = failed(sem) or sem
    mq = libc.mq_open(f"/actor-hostile-{key}".encode(), os.O_RDONLY, 0, None)
    found["mq"] = failed(mq) or mq
    print(json.dumps(found))
"""
)


@pytest.fixture(scope="module")
def sup() -> Iterator[RunningSupervisor]:
    public = Path(tempfile.mkdtemp(prefix="actor-supervisor-test-"))
    public.chmod(0o755)
    write_script(public, "plant.py", PLANT)
    write_script(public, "seek.py", SEEK)
    actors = "".join(
        f'[[actors]]\nname = "{name}"\nscript = "scripts/{script}"\nmode = "{mode}"\n{extra}'
        for name, script, mode, extra in (
            ("plant", "plant.py", "fork", ""),
            ("plant_exec", "plant.py", "exec", ""),
            # No mount namespace (the host's /tmp): the IPC namespace does not depend on it.
            ("plant_host_tmp", "plant.py", "fork", 'limits = { tmp_mb = "unlimited" }\n'),
            ("seek", "seek.py", "fork", ""),
            ("seek_host_tmp", "seek.py", "exec", 'limits = { tmp_mb = "unlimited" }\n'),
        )
    )
    running = start_supervisor(public, actors, workers=2)
    with killed_after(running, public):
        yield running


def _submit(sup: RunningSupervisor, actor: str, data: Any) -> dict[str, Any]:
    with sup.client(timeout_s=90) as client:
        return output_of(client.submit(actor, data, wait=True))


def _on_the_host(key: int) -> dict[str, int]:
    """The objects of ``key`` the host's own IPC namespace holds (this test's view)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    held = {
        "shm": libc.shmget(key, 0, 0),
        "msg": libc.msgget(key, 0),
        "sem": libc.semget(key, 0, 0),
        "mq": libc.mq_open(f"/actor-hostile-{key}".encode(), O_RDONLY, 0, None),
    }
    return {kind: ident for kind, ident in held.items() if ident >= 0}


def _remove(key: int, held: dict[str, int]) -> None:
    """Take away what a sandbox that does not hold left on the host."""
    libc = ctypes.CDLL(None, use_errno=True)
    if "shm" in held:
        libc.shmctl(held["shm"], IPC_RMID, None)
    if "msg" in held:
        libc.msgctl(held["msg"], IPC_RMID, None)
    if "sem" in held:
        libc.semctl(held["sem"], 0, IPC_RMID)
    if "mq" in held:
        os.close(held["mq"])
        libc.mq_unlink(f"/actor-hostile-{key}".encode())


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("plant", "seek"),
    [("plant", "seek"), ("plant_exec", "seek_host_tmp"), ("plant_host_tmp", "seek_host_tmp")],
)
def test_ipc_objects_a_run_creates_die_with_it_and_no_later_run_reads_them(
    sup: RunningSupervisor, plant: str, seek: str
) -> None:
    key = random.randrange(1 << 24, 1 << 30)
    try:
        made = _submit(sup, plant, {"key": key})
        # The probe really ran: it could create every kind of object, in its own namespace.
        assert all(isinstance(ident, int) and ident >= 0 for ident in made.values()), made
        assert _on_the_host(key) == {}  # nothing outlived the run on the host

        found = _submit(sup, seek, {"key": key})
        assert found == {kind: {"errno": "ENOENT"} for kind in made}, found
        assert sup.status()["supervisor"]["protections"]["private_ipc"] is True
    finally:
        _remove(key, _on_the_host(key))
