"""Start-up checks that must run before the supervisor has any thread (they fork).

They answer one question: can the sandbox user really run these scripts? A wrong answer found
here is a clear refusal to start ("which file, which user"); found later, it would be every run
failing.
"""

import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from supervisor.code.sync import OTHERS, RunsAs
from supervisor.config import ActorConfig, Config
from supervisor.errors import ConfigError, StartupError
from supervisor.store.openness import address_of, endpoint_of, lets_in_without_password
from supervisor.store.urls import has_password, parse_store_url
from workers.access import (
    AccessCheckError,
    problems_as_user,
    readable_places,
    resolve_user,
    unexecutable,
    unreadable_scripts,
    unreadable_scripts_from_threads,
    unrunnable_python,
    writable_places,
    writable_places_from_threads,
)
from workers.sandbox import SandboxConfig, private_tmp_available, processes_hidable

log = logging.getLogger(__name__)


def tmp_mb_unenforced(config: Config) -> str | None:
    """Why some actors' ``tmp_mb`` will not hold, if it will not: their runs keep the host's
    /tmp, /var/tmp, /dev/shm and /run/lock (a private tmpfs needs root, CAP_SYS_ADMIN)."""
    limited = sorted(a.name for a in config.actors.values() if a.limits.tmp_mb is not None)
    if not limited or private_tmp_available():
        return None
    return (
        "tmp_mb is not enforced: a private tmpfs per run needs the supervisor to run as root "
        "(CAP_SYS_ADMIN); runs share the host's /tmp, /var/tmp, /dev/shm and /run/lock; actors: "
        + ", ".join(limited)
    )


def runs_as(config: Config) -> RunsAs | None:
    """Who runs read files as, to the mode bits of the scripts we read as root (see
    :func:`supervisor.code.sync.read_snapshot`); None: as we do (not root, or run as root).

    :raises AccessCheckError: ``run_as`` names no user.
    """
    if os.geteuid() != 0:
        return None
    if config.sources.get("run_as", "default") == "default":
        return OTHERS  # a uid of run_as_range each
    user = resolve_user(config.supervisor.run_as)
    return None if user[0] == 0 else user


def prepare_sandbox(config: Config) -> SandboxConfig:
    """The sandbox settings every worker gets, after checking them as the sandbox user.

    As root, runs get uids of their own from ``run_as_range`` unless the operator chose a fixed
    ``run_as`` (root itself only with ``allow_root_scripts``); every uid of the range is "other"
    to the scripts' files, so checking as one (:func:`check_uid`) checks them all. Not as root,
    runs keep our user, and ``network = "none"`` (which needs root) is refused.
    """
    settings = config.supervisor
    modes = {actor.mode for actor in config.actors.values()}
    run_as: tuple[int, int] | None = None
    run_uids: tuple[int, ...] = ()
    user = settings.run_as
    offline = sorted(a.name for a in config.actors.values() if a.network == "none")
    if (unenforced := tmp_mb_unenforced(config)) is not None:
        log.warning("%s", unenforced)
    if os.geteuid() != 0 and offline:
        raise StartupError(
            f"network = 'none' needs the supervisor to run as root (an empty network "
            f"namespace); actors: {', '.join(offline)}"
        )
    try:
        if (check_as := checked_as(config)) is not None:
            if config.sources.get("run_as", "default") != "default":
                run_as = check_as
                if run_as[0] == 0 and not settings.allow_root_scripts:
                    raise StartupError(
                        f"run_as = {settings.run_as!r} is root: scripts would run with every "
                        "privilege; set allow_root_scripts = true if that is really meant"
                    )
            else:
                low, high = settings.run_as_range
                run_uids = tuple(range(low, high + 1))
                _check_alert_uid(config, run_uids)
                user = f"#{check_as[0]} (run_as_range {low}-{high})"
            # a missing script is no refusal: the start-up sync reports it (file_missing)
            # (a command's program need only be executable: a 0711 binary is fine)
            actors = [a for a in config.actors.values() if a.script.exists()]
            problems = unreadable_scripts(
                [str(a.script) for a in actors if not a.command], *check_as
            )
            problems += unexecutable([str(a.script) for a in actors if a.command], *check_as)
            if problems:
                raise StartupError(
                    f"scripts run as user {user}, which cannot read (or run) them:\n  "
                    + "\n  ".join(problems)
                )
            if "fork" in modes:
                _warn_if_stdlib_hidden(user, check_as)
            if check_as[0] != 0:
                reach = runs_reach(config, check_as)
                if reach.problems:
                    raise StartupError("\n".join(reach.problems))
                for warning in reach.warnings:
                    log.warning("%s", warning)
        python = resolve_python(settings.python, check_as, needed="exec" in modes)
    except AccessCheckError as exc:
        raise StartupError(f"run_as = {user!r}: {exc}") from exc
    return SandboxConfig(
        worker_id="",
        env_allow=settings.env_allow,
        preload=settings.preload if _forks_python(config) else (),
        run_as=run_as,
        run_uids=run_uids,
        kill_grace_s=settings.kill_grace_s,
        python=python,
        hide_processes=_hides_processes(),
    )


def _hides_processes() -> bool:
    """Whether runs' /proc will hide other users' processes; a warning as root when not."""
    hidden = processes_hidable()
    if not hidden and os.geteuid() == 0:
        log.warning(
            "runs see every process in /proc, command lines included (this kernel cannot "
            "mount a /proc with hidepid=invisible: Linux 5.8 or later): keep secrets off "
            "command lines"
        )
    return hidden


def checked_as(config: Config) -> tuple[int, int] | None:
    """Whom the start-up checks act as: the fixed ``run_as`` user, or else a uid of
    ``run_as_range`` (every uid of it is "other" to our files: :func:`check_uid`); None when
    we are not root (runs keep our user).

    :raises AccessCheckError: ``run_as`` names no user.
    """
    if os.geteuid() != 0:
        return None
    if config.sources.get("run_as", "default") != "default":
        return resolve_user(config.supervisor.run_as)
    uid = check_uid(config)
    return uid, uid


def check_uid(config: Config) -> int:
    """The uid of ``run_as_range`` the checks run as: the first after the runs' (workers x
    concurrency) and before the command alerts' (the range's last), when the range has one
    (the default's 256 uids do), else its first.

    A run kills every process of its uid as it takes it (an earlier run's leftovers), and so
    does an alert command; a script may do the same on purpose. A check as one of those uids
    could die half-way: by accident at a reload under load, or on purpose, refusing every
    reload (or, from a dead supervisor's leftover, every start).
    """
    s = config.supervisor
    low, high = s.run_as_range
    spare = low + s.workers * s.concurrency
    return spare if spare < high else low


class Reach(NamedTuple):
    """What the runs' user could reach that it must not: ``problems`` start refuses and check
    reports; ``warnings`` only the host can close."""

    problems: list[str]
    warnings: list[str]


def runs_reach(config: Config, run_as: tuple[int, int]) -> Reach:
    """Ask as the runs' user, in one child per kind of check (places share their folders):

    - code it could change that root imports (:func:`import_places`): a script would plant a
      module there (a ``json.py`` on an earlier ``sys.path`` folder, a package folder, a
      ``.pyc``) and the next import, a replaced worker's or a launcher's ``preload``, would
      run it with every privilege;
    - actors' code it could change (:func:`code_places`): a run would rewrite a helper module,
      or plant a ``.pyc`` in ``__pycache__`` (invisible to drift, which hashes the sources)
      that the next actor importing it runs, under another uid;
    - secrets it could read (:func:`secret_files`) or a configuration it could change (an
      actor of its own, ``run_as = "root"``, at the next start): a run would take the store's
      password and forge or read every run;
    - a PostgreSQL store that lets it in without a password (a warning:
      :func:`store_open_to_runs`).

    :raises AccessCheckError: the checks could not switch to that user.
    """
    imports = import_places(config.supervisor.preload)
    code = code_places(config.actors.values())
    configuration = {str(config.path)} if config.path is not None else set()
    writable = _by_place(writable_places(imports | code | configuration, *run_as))
    secrets = secret_files(config)
    readable = _by_place(readable_places(secrets, *run_as))
    problems = []
    if found := _found(writable, imports):
        problems.append(
            "the runs' user can change code this supervisor imports as root (a script could "
            "plant a module there and take over the supervisor); make these writable by root "
            "only (chmod go-w), or start from another folder:\n  " + "\n  ".join(found)
        )
    if (code_problem := _writable_code_message(_found(writable, code))) is not None:
        problems.append(code_problem)
    if found := _found(readable, set(secrets)) + _found(writable, configuration):
        held = "".join(f"\n  {path}: {what}" for path, what in sorted(secrets.items()))
        problems.append(
            "the runs' user can read a secret of this supervisor or change its configuration "
            "(a run would take the store's password and forge or read every run); make these "
            "readable and writable by root only (chmod 600, chmod go-w on their folders):\n  "
            + "\n  ".join(found)
            + (f"\nwhat they hold:{held}" if held else "")
        )
    open_store = store_open_to_runs(config, run_as)
    return Reach(problems, [open_store] if open_store is not None else [])


def _by_place(messages: list[str]) -> dict[str, list[str]]:
    """Access messages (``PATH: user NAME (uid N) ...``) by the path they name."""
    found: dict[str, list[str]] = {}
    for message in messages:
        found.setdefault(message.partition(": user ")[0], []).append(message)
    return found


def _found(messages: dict[str, list[str]], places: set[str]) -> list[str]:
    return [
        m for place in sorted({os.path.abspath(p) for p in places}) for m in messages.get(place, [])
    ]


def store_open_to_runs(config: Config, run_as: tuple[int, int]) -> str | None:
    """Why a run could connect to the PostgreSQL store itself, if it could: the server lets
    the store's user in without a password from the runs' user (``trust`` in pg_hba.conf), over
    the store's own address. Over TCP only actors with network can; over a Unix socket, all.
    Asked of the server (:mod:`supervisor.store.openness`); a warning, since the server's
    configuration is the host's, not ours.

    :raises AccessCheckError: the check could not switch to that user.
    """
    url = config.supervisor.database
    try:
        scheme = parse_store_url(url, base_dir=config.base_dir).scheme
    except ConfigError:
        return None  # the store's own opening says what is wrong with it
    address = address_of(url) if scheme in ("postgresql", "postgres") else None
    if address is None:
        return None
    host, port, user, database = address
    networked = [a.name for a in config.actors.values() if a.network != "none"]
    endpoint = endpoint_of(host, port)
    if endpoint is None or (not host.startswith("/") and not networked):
        return None

    def let_in(_: str) -> list[str]:
        if not lets_in_without_password(endpoint, user, database):
            return []
        return [f"is let into database {database!r} as {user!r} without a password"]

    found = problems_as_user(*run_as, [f"{host}:{port}"], let_in)
    if not found:
        return None
    return (
        "the store's server lets the runs' user in without a password: a run would read every "
        "run's input and output and forge results; require a password there (pg_hba.conf: "
        "scram-sha-256, not trust), or give actors network = 'none' (over TCP):\n  "
        + "\n  ".join(found)
    )


def secret_files(config: Config) -> dict[str, str]:
    """The files that hold a secret of ours, and what: the configuration file (a database
    password, alert webhooks, signing secrets or headers), ``http_token_file``, the CURVE
    secret key, and PostgreSQL's password and service files."""
    s = config.supervisor
    found: dict[str, str] = {}
    if config.path is not None:
        held = []
        if config.sources.get("database") == "file" and has_password(s.database):
            held.append("a database password")
        if any(a.webhook or a.secret or a.headers for a in config.alerts):
            held.append("alert webhooks (their URLs, secrets, headers)")
        if held:
            found[str(config.path)] = ", ".join(held)
    if s.http_token_file is not None:
        found[str(s.http_token_file)] = "the HTTP token"
    if s.control_curve_secret_key is not None:
        found[str(s.control_curve_secret_key)] = "the control socket's CURVE secret key"
    for variable, what in (
        ("PGPASSFILE", "PostgreSQL passwords"),
        ("PGSERVICEFILE", "PostgreSQL services"),
    ):
        if value := os.environ.get(variable):
            found[value] = what
    pgpass = os.path.expanduser("~/.pgpass")
    if "PGPASSFILE" not in os.environ and os.path.exists(pgpass):
        found[pgpass] = "PostgreSQL passwords"
    return found


def code_places(actors: Iterable[ActorConfig]) -> set[str]:
    """Each actor's script, its folder and that folder's ``__pycache__``."""
    places: set[str] = set()
    for actor in actors:
        folder = os.path.dirname(str(actor.script))
        places.update((str(actor.script), folder, os.path.join(folder, "__pycache__")))
    return places


def _writable_code_message(found: list[str]) -> str | None:
    if not found:
        return None
    return (
        "the runs' user can change actors' code (a run could rewrite a script or a helper "
        "module, or plant a .pyc in __pycache__, that another actor's runs then execute); "
        "make these writable by root only (chmod go-w):\n  " + "\n  ".join(found)
    )


def import_places(preload: tuple[str, ...]) -> set[str]:
    """Every file and folder our processes import code from: the interpreter, each ``sys.path``
    folder (the working folder for ``""``), every package folder and ``__pycache__`` below the
    others (the standard library, site-packages: the HTTP process and a replaced worker import
    more of them later, and a new ``x/__init__.py`` beside ``x.py`` would win), each loaded
    module's file, folder and compiled copy, and where each ``preload`` module would come from
    (found, not imported)."""
    places = {os.path.realpath(sys.executable)}
    cwd = os.getcwd()
    for entry in sys.path:
        folder = os.path.abspath(entry or os.curdir)
        places.add(folder)
        if folder != cwd:  # below the working folder, only what is loaded (an operator's
            places.update(_package_folders(folder))  # data folders are not code)
    for module in list(sys.modules.values()):
        for attribute in ("__file__", "__cached__"):
            if isinstance(path := getattr(module, attribute, None), str):
                places.update((path, os.path.dirname(path)))
    for name in preload:
        try:
            spec = importlib.util.find_spec(name.partition(".")[0])
        except (ImportError, ValueError):
            continue  # the launcher reports a module it cannot import
        if spec is not None:
            places.update(spec.submodule_search_locations or ())
            if spec.origin is not None and os.path.isabs(spec.origin):
                places.update((spec.origin, os.path.dirname(spec.origin)))
    return places


def _package_folders(root: str) -> Iterator[str]:
    """The folders below ``root`` an import could reach (identifier names: packages, namespace
    packages) and their ``__pycache__``: about 1,600 places with our virtualenv and standard
    library, found in 24 ms and checked in 36."""
    seen: set[str] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as found:
                for item in found:
                    if not item.is_dir():
                        continue
                    if item.name == "__pycache__":
                        yield item.path
                    elif item.name.isidentifier():
                        real = os.path.realpath(item.path)  # a linked folder: once
                        if real not in seen:
                            seen.add(real)
                            yield item.path
                            stack.append(item.path)
        except OSError:
            continue  # not a folder (a zip), or unreadable: nothing to walk


def _forks_python(config: Config) -> bool:
    """Whether a preloaded module can serve a run: a fork-mode script's child keeps it; exec
    mode and command actors replace the image, which then only costs each fork more. With no
    actors yet, a reload may add some: keep the setting."""
    actors = config.actors.values()
    return not actors or any(a.mode == "fork" and not a.command for a in actors)


def alert_uid(sandbox: SandboxConfig) -> int | None:
    """The own uid (= gid) of ``[[alerts]]`` commands: the range's last, which no worker slot
    takes (slots own the first ``workers x concurrency``); None without a range."""
    return sandbox.run_uids[-1] if sandbox.run_uids else None


def _check_alert_uid(config: Config, run_uids: tuple[int, ...]) -> None:
    if (problem := alert_uid_problem(config, run_uids)) is not None:
        raise StartupError(problem)


def alert_uid_problem(config: Config, run_uids: tuple[int, ...]) -> str | None:
    """A command alert needs a uid beside every run's: a range with none left over is refused
    (by ``start``, and reported by ``check``)."""
    commands = [alert.name for alert in config.alerts if alert.command is not None]
    settings = config.supervisor
    needed = settings.workers * settings.concurrency
    if not commands or len(run_uids) > needed:
        return None
    return (
        f"run_as_range '{run_uids[0]}-{run_uids[-1]}' holds {len(run_uids)} uids, all taken by "
        f"workers x concurrency ({settings.workers} x {settings.concurrency}); command alerts "
        f"({', '.join(commands)}) need one more of their own: widen run_as_range"
    )


def sandbox_user(config: Config, sandbox: SandboxConfig) -> tuple[int, int] | None:
    """Whom to check a script's access as (``config``: the one ``sandbox`` was made from): the
    fixed user, or the range's :func:`check_uid`."""
    if sandbox.run_uids:
        uid = check_uid(config)
        return uid, uid
    return sandbox.run_as


def resolve_python(configured: str | None, run_as: tuple[int, int] | None, *, needed: bool) -> str:
    """The interpreter exec mode starts.

    Configured: it must work, or we refuse. Otherwise this supervisor's own interpreter, or --
    when the sandbox user cannot run it (a pyenv or venv under a private home) -- the first
    ``python3`` on PATH that it can, with a warning that says so.
    """
    if configured is not None:
        if run_as is not None and needed and (problems := unrunnable_python(configured, *run_as)):
            raise StartupError("python: " + "; ".join(problems))
        return configured
    if run_as is None or not needed:
        return sys.executable
    candidates = [sys.executable, *_all_on_path("python3")]
    failures: list[str] = []
    for candidate in candidates:
        problems = unrunnable_python(candidate, *run_as)
        if not problems:
            if candidate != sys.executable:
                log.warning(
                    "exec mode: the sandbox user cannot run %s (%s); using %s instead "
                    "(set `python` in [supervisor] to choose)",
                    sys.executable, failures[0], candidate,
                )  # fmt: skip
            return candidate
        failures.extend(problems)
    raise StartupError(
        "exec mode: no Python interpreter the sandbox user can run; tried:\n  "
        + "\n  ".join(failures)
        + "\nset `python` in [supervisor] to one it can run"
    )


def check_reloaded_scripts(old: Config, new: Config, sandbox: SandboxConfig) -> None:
    """At a reload, new or moved scripts must exist and be readable by the sandbox user, and
    out of its reach (:func:`writable_code`), as at start-up. (An unchanged path whose file is
    gone is no error: the actor keeps its stored code.) :raises StartupError: naming the files.
    """
    fresh = [
        a
        for name, a in new.actors.items()
        if name not in old.actors or old.actors[name].script != a.script
    ]
    paths = [str(a.script) for a in fresh]
    if missing := [path for path in paths if not os.path.isfile(path)]:
        raise StartupError("no such file: " + ", ".join(repr(path) for path in missing))
    user = sandbox_user(old, sandbox)
    if user is None or not fresh:
        return
    # The check runs a Python as the sandbox user. In fork mode the sandbox keeps our own,
    # which that user may not be able to run (a pyenv or venv under a private home): then
    # try python3 on PATH, as the start-up check does for exec mode.
    failures: list[str] = []
    for python in dict.fromkeys([sandbox.python, *_all_on_path("python3")]):
        try:
            problems = unreadable_scripts_from_threads(python, paths, *user)
            writable = writable_places_from_threads(python, code_places(fresh), *user)
        except AccessCheckError as exc:
            failures.append(str(exc))
            continue
        if problems:
            raise StartupError("the sandbox user cannot read: " + "; ".join(problems))
        if user[0] != 0 and (unsafe := _writable_code_message(writable)) is not None:
            raise StartupError(unsafe)
        return
    raise StartupError("; ".join(failures))


def _all_on_path(name: str) -> list[str]:
    found: list[str] = []
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = shutil.which(name, path=folder)
        if path and os.path.realpath(path) not in {os.path.realpath(p) for p in found}:
            found.append(path)
    return found


def _warn_if_stdlib_hidden(user: str, run_as: tuple[int, int]) -> None:
    """Fork-mode scripts import from the supervisor's own standard library, as the sandbox user."""
    if unreadable_scripts([os.__file__], *run_as):
        log.warning(
            "fork mode: user %s cannot read this Python's standard library (%s); fork-mode "
            "scripts can import only the modules the launcher pre-imports. Install Python where "
            "that user can read it, or run such actors in exec mode.",
            user, os.path.dirname(os.__file__),
        )  # fmt: skip
