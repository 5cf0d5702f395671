"""One supervisor per block of run uids on a host.

Each run's child first kills every process of its uid (``kill(-1)`` as that uid): that is what
makes reusing a uid safe, and it would kill another supervisor's runs if two supervisors on one
host shared uids. So a supervisor that hands out uids from ``run_as_range`` claims the range for
as long as it runs: a file named after the range in :data:`CLAIMS`, held with an exclusive
``flock`` (the kernel drops it when the process dies, however it dies). A claim overlapping a
live one is refused with the holder's pid; a file whose lock is free is a dead holder's.
"""

import fcntl
import os
from pathlib import Path

from supervisor.errors import StartupError

CLAIMS = Path("/run/actor-supervisor/uid-ranges")
_FALLBACK = Path("/tmp/actor-supervisor-uid-ranges")  # where /run is not writable


class UidClaim:
    """A claimed range of uids; :meth:`release` (or the process's end) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = -1


def claim_uids(uids: tuple[int, ...], folder: Path | None = None) -> UidClaim | None:
    """Claim ``uids`` (a contiguous range) for this process; None when there are none.

    :raises StartupError: another live supervisor on this host claimed an overlapping range.
    """
    if not uids:
        return None
    folder = folder or _claims_folder()
    low, high = uids[0], uids[-1]
    guard = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one claim at a time on this host
        for other in folder.glob("*-*"):
            _refuse_if_live_overlap(other, low, high)
        path = folder / f"{low}-{high}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: _refuse_if_live_overlap saw to it
        os.write(fd, f"{os.getpid()}\n".encode())
        return UidClaim(path, fd)
    finally:
        os.close(guard)


def _refuse_if_live_overlap(path: Path, low: int, high: int) -> None:
    try:
        first, last = (int(part) for part in path.name.split("-"))
    except ValueError:
        return  # not a claim file
    if last < low or first > high:
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise StartupError(
                f"run_as_range {low}-{high} overlaps uids {first}-{last}, which the supervisor "
                f"with pid {holder} on this host hands out to its runs: each supervisor on a "
                "host needs a run_as_range of its own (a run's child kills every process of "
                "its uid before it starts)"
            ) from None
        path.unlink(missing_ok=True)  # its holder is gone
    finally:
        os.close(fd)


def _claims_folder() -> Path:
    for folder in (CLAIMS, _FALLBACK):
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            return folder
        except OSError:
            continue
    raise StartupError(f"cannot create {CLAIMS} (or {_FALLBACK}) to claim the run uids")
