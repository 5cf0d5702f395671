"""The supervisor's files, readable by its own user only.

Scripts run on the same host, as other users: a readable database, spool or code cache hands
them every other actor's inputs, outputs and code. From :func:`secure_state` on, the process
creates everything private (umask 077), the state folder is 0700, and what an older version
left readable (the state folder's tree, the SQLite files, the spool) is made private at start-up.
A folder the operator chose outside the state folder keeps its mode: only our files in it change.
"""

import os
import stat
from pathlib import Path

from supervisor.config import Config
from supervisor.controlkeys import state_folder
from supervisor.spool import spool_folder
from supervisor.store.urls import parse_store_url

PRIVATE_UMASK = 0o077
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def secure_state(config: Config) -> Path:
    """Set the umask, create the state folder 0700 and make existing files private.

    Returns the state folder. :raises OSError: it cannot be created or changed.
    """
    os.umask(PRIVATE_UMASK)
    folder = state_folder(config)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _private_tree(folder)
    store = parse_store_url(config.supervisor.database, base_dir=config.base_dir)
    if store.path is not None:
        for suffix in SQLITE_SUFFIXES:
            _private(Path(f"{store.path}{suffix}"))
    spool = spool_folder(config.supervisor.spool_dir, config.base_dir)
    if spool.is_dir():
        for path in spool.iterdir():
            _private(path)
    return folder


def _private_tree(folder: Path) -> None:
    """Folders 0700 and files 0600 under ``folder``, itself included; links are not followed."""
    os.chmod(folder, 0o700)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            _private(Path(root, name))
        for name in files:
            _private(Path(root, name))


def _private(path: Path) -> None:
    """Owner-only access (the owner's bits kept) for a file or folder that exists; a symbolic
    link is left alone, so nothing outside is changed through one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        return
    wanted = 0o700 if stat.S_ISDIR(mode) else stat.S_IMODE(mode) & 0o700
    if stat.S_IMODE(mode) != wanted:
        os.chmod(path, wanted)
