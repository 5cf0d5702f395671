"""Script files as code versions: hashing, the stat cache, version tags, git, the code cache.

No database and no loop here: these are the file-side steps that the supervisor (start-up sync,
the before-run check) and the CLI (``deploy``, ``drift``, ``rollback --write-file``) share.

The before-run check must cost next to nothing when nothing changed, so it compares a ``stat``
key -- size, mtime, inode, ctime -- with the one cached when the file was last hashed, and
hashes only when the key moved. A file modified within the file system's timestamp granularity
of being hashed could change again without moving its mtime (git's "racily clean" problem), so
such a key is not cached: the next check hashes again.
"""

import contextlib
import getpass
import hashlib
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from supervisor.code.records import DRIFT_DETECTED, SYNCED
from supervisor.errors import SupervisorError

log = logging.getLogger(__name__)

EXEC_MODES = ("file", "database", "auto")
SYNC_MODES = ("startup", "before_run", "manual")
FILE_SOURCE, DATABASE_SOURCE = "file", "database"  # runs.code_source
FIRST_VERSION = "1.0.0"
RACY_NS = 2_000_000_000  # a file modified this recently is hashed again at the next check
GIT_TIMEOUT_S = 5.0
_VERSION = re.compile(r"^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})$")

StatKey = tuple[int, int, int, int]  # size, mtime_ns, inode, ctime_ns


class CodeError(SupervisorError):
    """A script cannot be recorded as a code version (not UTF-8, NUL bytes, a bad version)."""


@dataclass(frozen=True, slots=True)
class FileSnapshot:
    """A script file's content as read once, with its hash and the stat key it was read at."""

    path: Path
    data: bytes
    sha256: str
    mtime: float
    key: StatKey | None  # None: modified too recently to trust the key (see RACY_NS)

    def text(self) -> str:
        """The content as source text. :raises CodeError: not storable as text."""
        return decode_source(self.data, self.path)


@dataclass(eq=False)
class ActorCode:
    """What the supervisor knows of one actor's code. Only the main loop touches it.

    ``code_sha256``/``history_id`` name the active stored version (empty/None: none yet), and
    ``cache_path`` its materialized copy. ``synced_sha`` is the file's hash at its last sync
    (``actors.script_file_hash``), ``seen_sha`` its hash when last looked at, ``stat`` the key
    ``seen_sha`` was computed at.
    """

    home: str  # the actor's folder: working directory and sys.path[0] of its runs
    history_id: str | None = None
    code_sha256: str = ""
    cache_path: str | None = None
    synced_sha: str | None = None
    seen_sha: str | None = None
    status: str = SYNCED
    stat: StatKey | None = None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def current_key(path: Path) -> StatKey | None:
    """The stat key of ``path`` now; None when it is missing (or not readable as a file)."""
    try:
        return stat_key(os.stat(path))
    except OSError:
        return None


def read_snapshot(path: Path, *, clock_ns: Callable[[], int] = time.time_ns) -> FileSnapshot | None:
    """Read and hash ``path``; None when it does not exist or cannot be read (logged).

    ``clock_ns`` (wall clock, ns) decides whether the file changed too recently for its stat key
    to be trusted (:data:`RACY_NS`); tests pass a later one instead of waiting."""
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            data = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read script %s: %s", path, exc)
        return None
    key: StatKey | None = stat_key(st)
    if clock_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_NS:
        key = None
    return FileSnapshot(path, data, sha256_hex(data), st.st_mtime, key)


def decode_source(data: bytes, path: Path | str) -> str:
    """UTF-8 text without NUL, as Python source is: stored as text, it hashes back the same."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CodeError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if "\x00" in text:
        raise CodeError(f"{path}: contains NUL bytes, which Python source cannot")
    return text


def status_of(file_sha: str | None, code_sha: str | None) -> str:
    return SYNCED if file_sha is not None and file_sha == code_sha else DRIFT_DETECTED


def check_version(tag: str) -> tuple[int, int, int]:
    """``"1.2.3"`` -> ``(1, 2, 3)``. :raises CodeError: not MAJOR.MINOR.PATCH."""
    match = _VERSION.match(tag)
    if match is None:
        raise CodeError(f"version {tag!r}: expected MAJOR.MINOR.PATCH, such as 1.0.0")
    return int(match[1]), int(match[2]), int(match[3])


def next_version(previous: str | None, taken: Collection[str]) -> str:
    """The previous version with its patch incremented (1.0.0 first), skipping taken tags."""
    if previous is None:
        major, minor, patch = 1, 0, 0
    else:
        major, minor, patch = check_version(previous)
        patch += 1
    while f"{major}.{minor}.{patch}" in taken:
        patch += 1
    return f"{major}.{minor}.{patch}"


def git_commit(path: Path) -> str | None:
    """The commit that last touched ``path`` in its repository (``HEAD`` when it is untracked),
    with ``-dirty`` when the file differs from it; None without git or a repository."""
    folder, name = str(path.parent), path.name
    commit = _git(folder, "log", "-n1", "--format=%H", "--", name)
    if commit is None:
        return None
    if not commit:
        return _git(folder, "rev-parse", "--verify", "-q", "HEAD") or None
    dirty = _git(folder, "status", "--porcelain", "--", name)
    return f"{commit}-dirty" if dirty else commit


def _git(folder: str, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", folder, *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def os_user() -> str:
    """Who runs this command, for ``changed_by``."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def make_cache(prefix: str = "actor-supervisor-code-") -> Path:
    """A private folder for materialized code (0700): a script must not read another actor's
    code. The sandbox reads a run's script before it switches to the run's user."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def materialize(folder: Path, sha256: str, text: str) -> Path:
    """``folder/<sha256>.py`` holding ``text``, written once, atomically (temp file + rename).

    Content-addressed: two runs of the same code share the file and never race on it.
    :raises CodeError: ``text`` does not hash to ``sha256`` (the store gave back other code).
    """
    path = folder / f"{sha256}.py"
    if path.exists():
        return path
    data = text.encode("utf-8")
    if sha256_hex(data) != sha256:
        raise CodeError(f"stored code does not match its hash {sha256[:12]}")
    write_atomically(path, data, mode=0o600)
    return path


def write_atomically(
    path: Path, data: bytes, *, mode: int, owner: tuple[int, int] | None = None
) -> None:
    """Replace ``path`` with ``data`` in one rename: readers see the old file or the new one."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        if owner is not None:
            with contextlib.suppress(PermissionError):
                os.chown(temp, *owner)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
