"""Run uids for the tests: a block of systemd's DynamicUser range per test process, claimed.

A run's child kills every process of its uid before it starts, so two supervisors or launchers
that hand out the same uid kill each other's runs. Test processes run side by side: other
checkouts' sessions on the same host, and pytest-xdist's workers within one session. A block
chosen by pid alone collides now and then (one in fifteen for two sessions); so each process
claims its blocks with an exclusive ``flock`` on a file in :data:`CLAIMS`, which it holds until
it exits (the kernel drops the lock however it exits). Two live test processes never hold the
same block, and a block a running supervisor claimed (``supervisor.uidclaim``: a session that
does not claim, or a supervisor left running) is passed over.
"""

import fcntl
import os
import tempfile
from pathlib import Path

from supervisor.uidclaim import _FALLBACK as SUPERVISOR_FALLBACK
from supervisor.uidclaim import CLAIMS as SUPERVISOR_CLAIMS

#: blocks 1..15 of 256 uids above 61184; block 0 is the default ``run_as_range`` (a supervisor
#: running on this host with default settings keeps its uids), and DynamicUser ends at 65519
FIRST_UID, BLOCK, BLOCKS = 61184, 256, 15
#: not ``actor-supervisor-*``: supervisors sweep such folders in the temporary folder
CLAIMS = Path(tempfile.gettempdir()) / "as-test-uid-blocks"

_held: dict[int, range] = {}  # shift -> the block this process claimed for it


def session_uids(shift: int = 0) -> range:
    """This process's block of run uids (claimed on first use). A supervisor claims its range
    for as long as it runs (``supervisor.uidclaim``): ``shift`` gives a second one running at
    once a block of its own."""
    if shift not in _held:
        _held[shift] = _claim_block(taken=set(_held.values()))
    return _held[shift]


def _claim_block(taken: set[range]) -> range:
    CLAIMS.mkdir(mode=0o755, exist_ok=True)
    start = os.getpid() % BLOCKS  # sessions that do not claim pick by pid: spread out like them
    for step in range(BLOCKS):
        number = 1 + (start + step) % BLOCKS
        uids = range(FIRST_UID + BLOCK * number, FIRST_UID + BLOCK * (number + 1))
        if uids in taken:
            continue
        fd = os.open(CLAIMS / f"block-{number}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if not _free_of_supervisors(uids):  # looked at once ours: no test process races us
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return uids  # fd stays open: the claim lasts as long as this process
    raise RuntimeError(
        f"every block of test run uids is claimed by another live test process ({CLAIMS})"
    )


def _free_of_supervisors(uids: range) -> bool:
    """No live supervisor claimed any of ``uids``. Read-only: the claim files name their
    holder's pid (a reused pid only makes us pass a block over); locking them to look, as a
    supervisor does, could make one starting that instant refuse."""
    for folder in (SUPERVISOR_CLAIMS, SUPERVISOR_FALLBACK):
        for path in folder.glob("*-*") if folder.is_dir() else ():
            try:
                low, high = (int(part) for part in path.name.split("-"))
                holder = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # not a claim, or gone meanwhile, or being written
            if low <= uids[-1] and high >= uids[0] and os.path.exists(f"/proc/{holder}"):
                return False
    return True
