"""Start-up checks that the user scripts run as can actually reach them.

The answer depends on owners, modes, ACLs and every component of every path, so it is not
computed here: a forked child switches to that user and simply asks the kernel (``open`` and
``access``). The supervisor calls these before it has any thread, and refuses to start with the
returned messages ("which file, which user") rather than failing every run later.
"""

import os
import pwd
from collections.abc import Callable, Iterable

import orjson

EXIT_SWITCH_FAILED = 3


class AccessCheckError(Exception):
    """The check itself could not run (unknown user, no privilege to switch to it)."""


def resolve_user(name: str) -> tuple[int, int]:
    """``(uid, gid)`` of a user name (or a numeric uid), from the password database.

    :raises AccessCheckError: no such user.
    """
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise AccessCheckError(
            f"unknown user {name!r}: not in the password database (check run_as)"
        ) from None
    return entry.pw_uid, entry.pw_gid


def unreadable_scripts(paths: Iterable[str], uid: int, gid: int) -> list[str]:
    """Messages for each script that user ``uid`` cannot read, or whose folder it cannot list
    and enter; empty when every script is fine.

    :raises AccessCheckError: when this process cannot switch to that user.
    """
    return problems_as_user(uid, gid, [os.path.abspath(p) for p in paths], _script_problems)


def unexecutable(paths: Iterable[str], uid: int, gid: int) -> list[str]:
    """Messages for each program (say, the exec-mode interpreter) user ``uid`` cannot run."""
    return problems_as_user(uid, gid, [os.path.abspath(p) for p in paths], _exec_problems)


# The checks themselves, as source: run in a child forked from here (:func:`problems_as_user`), or,
# from a process that already has threads (a reload), by a fresh interpreter the kernel starts
# as the user (:func:`_check_from_threads`) -- perhaps another Python, which cannot import ours.
_CHECKS = """\
import os


def script_problems(path):
    problems = []
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except FileNotFoundError:
        problems.append("this file does not exist (or is hidden from it)")
    except OSError:
        problems.append("cannot read this file")
    folder = os.path.dirname(path)
    if not os.access(folder, os.R_OK | os.X_OK):
        problems.append("cannot list and enter its folder " + folder)
    return problems


def write_problems(path):
    found = path
    while not os.path.lexists(found) and found != os.path.dirname(found):
        found = os.path.dirname(found)
    if os.access(found, os.W_OK | (os.X_OK if os.path.isdir(found) else 0)):
        if found == path:
            return ["can write to it"]
        return ["can create it (it can write to %s)" % found]
    # A folder above it that the user can write lets it rename what lies below, root's or not,
    # and put its own in its place -- unless the folder is sticky (/tmp): then only its own
    # entries, or all of them when the folder is its own.
    child, parent = found, os.path.dirname(found)
    while parent != child:
        writable, sticky, owned = _folder(parent)
        if writable and (not sticky or owned or os.lstat(child).st_uid == os.getuid()):
            name = os.path.basename(child)
            return ["can replace it (it can rename %s in %s)" % (name, parent)]
        child, parent = parent, os.path.dirname(parent)
    return []


def read_problems(path):
    return ["can read it"] if os.access(path, os.R_OK) else []


_folders = {}  # a folder's answer, once per check: paths share most of their parents


def _folder(path):
    if path not in _folders:
        st = os.stat(path)
        _folders[path] = (
            os.access(path, os.W_OK | os.X_OK),
            bool(st.st_mode & 0o1000),  # S_ISVTX
            st.st_uid == os.getuid(),
        )
    return _folders[path]
"""
_REPORT = """
import json, sys
check = globals()[sys.argv[1]]
print(json.dumps([[path, msg] for path in sys.argv[2:] for msg in check(path)]))
"""
_checks: dict[str, Callable[[str], list[str]]] = {}
exec(compile(_CHECKS, "<access checks>", "exec"), _checks)  # our own text
_script_problems = _checks["script_problems"]
_write_problems = _checks["write_problems"]
_read_problems = _checks["read_problems"]


def unreadable_scripts_from_threads(
    python: str, paths: Iterable[str], uid: int, gid: int
) -> list[str]:
    """:func:`unreadable_scripts` for a process that already has threads (a reload)."""
    return _check_from_threads(python, uid, gid, paths, "script_problems")


def writable_places_from_threads(
    python: str, paths: Iterable[str], uid: int, gid: int
) -> list[str]:
    """:func:`writable_places` for a process that already has threads (a reload)."""
    return _check_from_threads(python, uid, gid, paths, "write_problems")


def _check_from_threads(
    python: str, uid: int, gid: int, paths: Iterable[str], check: str
) -> list[str]:
    """Forking a threaded process is unsafe, so the check runs in a fresh ``python`` (one the
    user can run) that the kernel starts as that user; it costs an interpreter start."""
    import subprocess

    paths = sorted({os.path.abspath(p) for p in paths})
    if not paths:
        return []
    switch = os.geteuid() == 0 or (uid, gid) != (os.getuid(), os.getgid())
    try:
        done = subprocess.run(
            [python, "-c", _CHECKS + _REPORT, check, *paths],
            capture_output=True,
            timeout=60,
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
            user=uid if switch else None,
            group=gid if switch else None,
            extra_groups=[] if switch else None,
        )
        found = orjson.loads(done.stdout)
    except (OSError, subprocess.TimeoutExpired, orjson.JSONDecodeError) as exc:
        raise AccessCheckError(f"the access check as uid {uid} could not run: {exc}") from exc
    user = _user_name(uid)
    return [f"{path}: user {user} (uid {uid}) {msg}" for path, msg in found]


def unrunnable_python(python: str, uid: int, gid: int) -> list[str]:
    """Messages when user ``uid`` cannot start ``python`` and import the standard library.

    Stronger than an execute-permission check: the interpreter's ``lib`` folder (a pyenv build
    under a private home, say) must be readable too, so the check really runs it.
    """
    return problems_as_user(uid, gid, [python], _python_problems)


def _python_problems(python: str) -> list[str]:
    import subprocess  # only in this short-lived, single-threaded child

    try:
        done = subprocess.run(
            [python, "-c", "import json, runpy, sys"],
            env={"PATH": "/usr/bin:/bin"},
            capture_output=True,
            timeout=60,
            cwd="/",
        )
    except OSError as exc:
        return [f"cannot run this interpreter: {exc.strerror}"]
    except subprocess.TimeoutExpired:
        return ["this interpreter did not start within 60 s"]
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return [f"this interpreter fails to start (exit {done.returncode}): {tail[0]}"]
    return []


def writable_places(paths: Iterable[str], uid: int, gid: int) -> list[str]:
    """Messages for each path user ``uid`` could change: a file it can write, a folder it can
    create files in, a path that does not exist that it can create, or a path below a folder
    where it could rename the path (or a folder on the way) and put its own in its place.
    Empty when it can change none of them."""
    return problems_as_user(uid, gid, sorted({os.path.abspath(p) for p in paths}), _write_problems)


def readable_places(paths: Iterable[str], uid: int, gid: int) -> list[str]:
    """Messages for each path user ``uid`` can read; empty when it can read none of them."""
    return problems_as_user(uid, gid, sorted({os.path.abspath(p) for p in paths}), _read_problems)


def _exec_problems(path: str) -> list[str]:
    return [] if os.access(path, os.X_OK) else ["cannot execute this program"]


def problems_as_user(
    uid: int, gid: int, paths: list[str], problems_of: Callable[[str], list[str]]
) -> list[str]:
    """Run ``problems_of`` on each path in a child switched to ``uid``/``gid``."""
    if not paths:
        return []
    user = _user_name(uid)
    switch = os.geteuid() == 0 or (uid, gid) != (os.getuid(), os.getgid())
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: switch, check, report; never returns into the caller
        status = 1
        try:
            os.close(r)
            if switch:
                try:
                    os.setgroups([])
                    os.setgid(gid)
                    os.setuid(uid)
                except OSError as exc:
                    os.write(w, orjson.dumps(str(exc)))
                    os._exit(EXIT_SWITCH_FAILED)
            found = [f"{p}: user {user} (uid {uid}) {msg}" for p in paths for msg in problems_of(p)]
            data = orjson.dumps(found)
            while data:
                data = data[os.write(w, data) :]
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = f.read()
    _, wait_status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(wait_status)
    if code == EXIT_SWITCH_FAILED:
        why = orjson.loads(report)
        raise AccessCheckError(f"cannot switch to user {user} (uid {uid}, gid {gid}): {why}")
    if code != 0:
        raise AccessCheckError(f"the access check as user {user} failed (exit status {code})")
    messages: list[str] = orjson.loads(report)
    return messages


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"#{uid}"
