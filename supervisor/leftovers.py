"""A killed supervisor's leftovers, cleaned at the next start-up.

SIGKILL (or the OOM killer) gives a supervisor no chance to remove its scoreboard in
``/dev/shm``, its runtime folder (``/tmp/actor-supervisor-*``, the workers' socket) and its code
cache (``/tmp/actor-supervisor-code-*``); over weeks of restarts they pile up, and shared
memory is RAM. Other supervisors may run on the same host, so only what no live process owns
is removed:

- a folder carries an ``.owner`` marker (pid and process start time) written when it was made;
  it is a leftover once that process is gone (a pid reused by another process does not count,
  the start time differs). A folder without a marker (made by an older version) is kept.
- a scoreboard is owned while any process maps it (``/proc/*/maps``); one created in the last
  minute is kept too, since its creator maps it right after creating it.
"""

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

MARKER = ".owner"
SCOREBOARD_GLOB = "actor-supervisor-scoreboard-*"
FOLDER_GLOB = "actor-supervisor-*"
SCOREBOARD_MIN_AGE_S = 60.0


def mark_owned(folder: Path) -> None:
    """Write the marker that lets a later start-up tell whether ``folder`` is still in use."""
    me = psutil.Process()
    (folder / MARKER).write_text(f"{me.pid} {me.create_time()!r}\n")


def clean_leftovers(tmp: Path | None = None, shm: Path = Path("/dev/shm")) -> list[Path]:
    """Remove the scoreboards and folders of dead supervisors; return what was removed."""
    removed: list[Path] = []
    tmp = Path(tempfile.gettempdir()) if tmp is None else tmp
    for folder in tmp.glob(FOLDER_GLOB):
        if folder.is_dir() and _owner_gone(folder / MARKER):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if shm.is_dir():
        boards = list(shm.glob(SCOREBOARD_GLOB))
        mapped = _mapped_paths() if boards else set()
        now = time.time()
        for board in boards:
            with contextlib.suppress(OSError):
                if str(board) in mapped or now - board.stat().st_mtime < SCOREBOARD_MIN_AGE_S:
                    continue
                board.unlink()
                removed.append(board)
    if removed:
        log.info(
            "removed %d leftovers of supervisors that are gone (scoreboards, runtime folders, "
            "code caches)",
            len(removed),
            extra={"event": "leftovers_removed", "paths": [str(p) for p in removed[:20]]},
        )
    return removed


def _owner_gone(marker: Path) -> bool:
    try:
        pid_text, started_text = marker.read_text().split()
        pid, started = int(pid_text), float(started_text)
    except (OSError, ValueError):
        return False  # no marker (or unreadable): not ours to judge
    try:
        return abs(psutil.Process(pid).create_time() - started) > 0.01
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _mapped_paths() -> set[str]:
    """Every file mapped by any process we can see (the scoreboard's owners map it)."""
    mapped: set[str] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry.name}/maps", "rb") as maps:
            for line in maps:
                if b"actor-supervisor-scoreboard-" in line:
                    mapped.add(line.split(maxsplit=5)[-1].strip().decode(errors="replace"))
    return mapped
