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
import errno
import getpass
import hashlib
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.code.bundle import bundle_sha256, discover
from supervisor.code.records import DRIFT_DETECTED, SYNCED
from supervisor.errors import SupervisorError

log = logging.getLogger(__name__)

EXEC_MODES = ("file", "database", "auto")
SYNC_MODES = ("startup", "before_run", "manual")
FILE_SOURCE, DATABASE_SOURCE = "file", "database"  # runs.code_source
FIRST_VERSION = "1.0.0"
RACY_NS = 2_000_000_000  # a file modified this recently is hashed again at the next check
GIT_TIMEOUT_S = 5.0
GIT_LOG_TIMEOUT_S = 60.0  # one batch's git log, read until each file showed
GIT_BATCH = 2000  # files per git command line (ARG_MAX)
_VERSION = re.compile(r"^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})$")

MAX_FILE_BYTES = 4 << 20  # a script or module file read as code; a bigger one is not read
StatKey = tuple[int, int, int, int]  # size, mtime_ns, inode, ctime_ns
# Who runs read files as, to a file's mode bits: (uid, gid), or OTHERS for the uids of a
# run_as_range (none of them owns a script or is in its group).
RunsAs = tuple[int, int]
OTHERS: RunsAs = (-1, -1)
BundleKey = tuple[StatKey, ...]  # one per file of a bundle, in FileSnapshot.files order


class CodeError(SupervisorError):
    """A script cannot be recorded as a code version (not UTF-8, NUL bytes, a bad version)."""


@dataclass(frozen=True, slots=True)
class FileSnapshot:
    """An actor's code bundle as read once (:mod:`supervisor.code.bundle`): the entry file's
    content, the other files', the bundle's hash and the stat key it was read at."""

    path: Path  # the entry file
    data: bytes  # its content
    sha256: str  # the bundle's hash (the entry's own when the bundle is the entry alone)
    mtime: float  # the entry's mtime
    key: BundleKey | None  # None: modified too recently to trust the key (see RACY_NS)
    others: dict[str, bytes] = field(default_factory=dict)  # relative path -> content
    #: Every file of the bundle as an absolute path, in :attr:`files` order; computed once, so
    #: the actors sharing a snapshot share the tuple their :class:`ActorCode` keeps.
    paths: tuple[str, ...] = field(init=False, repr=False, compare=False)
    # Each file decoded once ("" is the entry): the actors sharing a snapshot share its source.
    _decoded: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        paths = tuple(str(self.path.parent / rel) for rel in self.files)
        object.__setattr__(self, "paths", paths)
        object.__setattr__(self, "_decoded", {})

    @property
    def files(self) -> tuple[str, ...]:
        """Every file of the bundle, relative to the entry's folder, the entry first."""
        return (self.path.name, *sorted(self.others))

    def text(self) -> str:
        """The entry's content as source text. :raises CodeError: not storable as text."""
        if "" not in self._decoded:
            self._decoded[""] = decode_source(self.data, self.path)
        return self._decoded[""]

    def texts(self) -> dict[str, str]:
        """The other files as text. :raises CodeError: one is not storable as text."""
        texts = {}
        for rel, data in self.others.items():
            if rel not in self._decoded:
                self._decoded[rel] = decode_source(data, rel)
            texts[rel] = self._decoded[rel]
        return texts


@dataclass(eq=False, slots=True)
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
    stat: BundleKey | None = None
    paths: tuple[str, ...] = ()  # the bundle's files when last read (``stat``'s order)
    modules: tuple[str, ...] = ()  # the materialized bundle's files besides its entry


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def current_key(paths: Sequence[str]) -> BundleKey | None:
    """The stat key of a bundle's files (absolute paths, in :attr:`FileSnapshot.paths` order)
    now; None when one is missing (or not readable as a file). Plain strings: this runs before
    every dispatch of a ``before_run`` actor."""
    try:
        return tuple([stat_key(os.stat(path)) for path in paths])
    except OSError:
        return None


def read_snapshot(
    path: Path,
    *,
    scan: bool = True,
    clock_ns: Callable[[], int] = time.time_ns,
    runs_as: RunsAs | None = None,
) -> FileSnapshot | None:
    """Read and hash the bundle of ``path``; None when the entry does not exist or cannot be
    read (logged). ``scan``: follow its imports (a Python script); else the file alone.

    ``clock_ns`` (wall clock, ns) decides whether a file changed too recently for its stat key
    to be trusted (:data:`RACY_NS`); tests pass a later one instead of waiting.

    ``runs_as``: the user runs read files as, when it is not us (we are root). A file that user
    could not read is not read: its content becomes code a run executes, and a traceback shows
    its lines, so a script (or module) that is a symlink to a private file must not turn root's
    read into the run's. Only regular files of at most :data:`MAX_FILE_BYTES` are read, without
    blocking: a FIFO, or a link to ``/dev/zero``, must neither stall nor fill the supervisor."""
    stats: dict[str, os.stat_result] = {}

    def read(file: Path) -> bytes | None:
        try:
            data, st = read_code_file(file, runs_as)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read script %s: %s", file, exc)
            return None
        stats[os.path.relpath(file, path.parent)] = st
        return data

    entry = read(path)
    if entry is None:
        return None
    files = {path.name: entry}
    if scan:
        files = discover(path.parent, path.name, lambda f: entry if f == path else read(f))
    now = clock_ns()
    others = {rel: data for rel, data in files.items() if rel != path.name}
    order = (path.name, *sorted(others))
    st = stats[path.name]
    key: BundleKey | None = tuple(stat_key(stats[rel]) for rel in order)
    if any(now - max(s.st_mtime_ns, s.st_ctime_ns) < RACY_NS for s in stats.values()):
        key = None
    return FileSnapshot(path, entry, bundle_sha256(files, path.name), st.st_mtime, key, others)


def read_code_file(file: Path, runs_as: RunsAs | None) -> tuple[bytes, os.stat_result]:
    """A script or module file's content and stat (see :func:`read_snapshot`).

    :raises OSError: it cannot be read, is no regular file, is too big, or ``runs_as`` could
        not read it.
    """
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise OSError(errno.EFBIG, f"bigger than {MAX_FILE_BYTES >> 20} MiB")
        if runs_as is not None and not _may_read(fd, st, runs_as):
            raise OSError(errno.EACCES, "the user runs take may not read it (or a folder above it)")
        data = os.read(fd, MAX_FILE_BYTES + 1)
        while len(data) < st.st_size and (more := os.read(fd, MAX_FILE_BYTES + 1 - len(data))):
            data += more
        if len(data) > MAX_FILE_BYTES:
            raise OSError(errno.EFBIG, f"bigger than {MAX_FILE_BYTES >> 20} MiB")
        return data, st
    finally:
        os.close(fd)


def _may_read(fd: int, st: os.stat_result, who: RunsAs) -> bool:
    """Whether ``who`` may read the open file: read on it, search on each folder of its real
    path (the kernel's name for the descriptor, every symlink resolved), by the mode bits."""
    if not _allows(st, who, 4):
        return False
    folder = os.path.dirname(os.readlink(f"/proc/self/fd/{fd}"))
    while True:
        if not _allows(os.stat(folder), who, 1):
            return False
        if folder == "/":
            return True
        folder = os.path.dirname(folder)


def _allows(st: os.stat_result, who: RunsAs, bit: int) -> bool:
    uid, gid = who
    if st.st_uid == uid:
        return bool(st.st_mode >> 6 & bit)
    if st.st_gid == gid:
        return bool(st.st_mode >> 3 & bit)
    return bool(st.st_mode & bit)


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


def git_commits(paths: Iterable[Path]) -> dict[Path, str | None]:
    """:func:`git_commit` of many files at once, as the start-up sync needs it: a handful of git
    processes per repository (its top, HEAD, one ``git log`` per :data:`GIT_BATCH` files read
    only until each file's last commit showed, one ``git status``) instead of two or three per
    file. 100,000 actors would otherwise spend minutes spawning git before the supervisor starts.
    """
    found: dict[Path, str | None] = {}
    repos: dict[str, list[tuple[Path, str]]] = {}  # top level -> (path, path relative to it)
    tops: dict[str, str | None] = {}
    for path in dict.fromkeys(paths):
        folder = str(path.parent)
        if folder not in tops:
            tops[folder] = _git(folder, "rev-parse", "--show-toplevel") or None
        top = tops[folder]
        found[path] = None
        if top is not None:
            real = os.path.join(os.path.realpath(folder), path.name)
            repos.setdefault(top, []).append((path, os.path.relpath(real, top)))
    for top, files in repos.items():
        head = _git(top, "rev-parse", "--verify", "-q", "HEAD")
        if not head:
            continue  # a repository without commits: git log fails, as for git_commit
        for start in range(0, len(files), GIT_BATCH):
            chunk = files[start : start + GIT_BATCH]
            names = [rel for _, rel in chunk]
            last = _last_commits(top, names)
            dirty = _changed(top, names)
            for path, rel in chunk:
                commit = last.get(rel)
                if commit is None:
                    found[path] = head  # untracked
                else:
                    found[path] = f"{commit}-dirty" if rel in dirty else commit
    return found


def _last_commits(top: str, names: list[str]) -> dict[str, str]:
    """Each file's last commit, from one ``git log`` read until every file showed up."""
    wanted, last = set(names), {}
    command = ["git", "-C", top, "--literal-pathspecs", "-c", "core.quotePath=false", "log",
               "-z", "--format=%x01%H", "--name-only", "--", *names]  # fmt: skip
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError:
        return {}
    assert proc.stdout is not None
    commit, pending = "", b""
    timer = threading.Timer(GIT_LOG_TIMEOUT_S, proc.kill)  # a hung git must not hang start-up
    timer.start()
    try:
        while wanted and (chunk := os.read(proc.stdout.fileno(), 1 << 16)):
            *tokens, pending = (pending + chunk).split(b"\0")
            for token in tokens:
                if token.startswith(b"\x01"):
                    commit = token[1:].decode()
                    continue
                name = os.fsdecode(token.lstrip(b"\n"))
                if name in wanted:
                    wanted.discard(name)
                    last[name] = commit
    finally:
        timer.cancel()
        proc.kill()
        proc.stdout.close()
        proc.wait()
    return last


def _changed(top: str, names: list[str]) -> set[str]:
    """Which of ``names`` differ from HEAD (``git status``, as :func:`git_commit` asks)."""
    command = ["git", "-C", top, "--literal-pathspecs", "status", "--porcelain", "-z", "--"]
    try:
        done = subprocess.run([*command, *names], capture_output=True, timeout=GIT_TIMEOUT_S,
                              check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return set()
    changed: set[str] = set()
    tokens = iter(os.fsdecode(done.stdout).split("\0") if done.returncode == 0 else ())
    for entry in tokens:
        if len(entry) > 3:
            changed.add(entry[3:])
            if entry[0] in "RC":
                next(tokens, None)  # a rename's or copy's source
    return changed


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


def materialize(
    folder: Path, sha256: str, entry: str, text: str, others: Mapping[str, str] | None = None
) -> Path:
    """``folder/<sha256>/`` holding the bundle (``entry`` and ``others``, relative path -> text),
    written once, atomically (a temporary folder renamed); returns the entry's path there.

    Content-addressed: two runs of the same code share it and never race on it.
    :raises CodeError: a path that is not a plain relative one, or files that do not hash to
        ``sha256`` (the store gave back other code).
    """
    target = folder / sha256
    if "/" in entry or entry in ("", ".", ".."):
        raise CodeError(f"stored code has an invalid entry name {entry!r}")
    if (target / entry).is_file():
        return target / entry
    files = {entry: text.encode("utf-8")}
    for rel, body in (others or {}).items():
        if not is_module_path(rel):
            raise CodeError(f"stored code has an invalid module path {rel!r}")
        files[rel] = body.encode("utf-8")
    if bundle_sha256(files, entry) != sha256:
        raise CodeError(f"stored code does not match its hash {sha256[:12]}")
    if target.is_dir():  # the same code as another actor's single file, under another name
        write_atomically(target / entry, files[entry], mode=0o600)
        return target / entry
    temp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{sha256[:12]}.", suffix=".tmp"))
    try:
        for rel, data in files.items():
            dest = temp / rel
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        os.rename(temp, target)
    except OSError:
        shutil.rmtree(temp, ignore_errors=True)
        if not target.is_dir():  # else another thread wrote the same bundle first
            raise
    return target / entry


def is_module_path(rel: str) -> bool:
    """A bundle's module path: ``name.py`` or ``pkg/.../name.py``, identifiers only."""
    parts = rel.split("/")
    stem, suffix = os.path.splitext(parts[-1])
    return suffix == ".py" and all(p.isidentifier() for p in (*parts[:-1], stem))


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
