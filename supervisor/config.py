"""The configuration file: TOML read once into a validated, frozen :class:`Config`.

Precedence for ``[supervisor]`` settings: flag, then ``ACTOR_SUPERVISOR_<NAME>``, then the
file, then the default (see :mod:`supervisor.settings`). Every ``[[actors]]`` entry is checked
key by key; the first problem raises a :class:`ConfigError` naming the file, the key path and
what was expected, so the supervisor refuses to start rather than guess.
"""

import os
import re
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from protocol.messages import MAX_INPUT_CHARS, Limits
from supervisor.alerts.config import AlertConfig, parse_alerts
from supervisor.code.sync import EXEC_MODES, SYNC_MODES
from supervisor.config_kinds import Json, ScheduleTable, Zone
from supervisor.errors import ConfigError
from supervisor.schedule import (
    CATCH_UP_POLICIES,
    IntervalSchedule,
    Schedule,
    ScheduleError,
    parse_schedule,
)
from supervisor.settings import (
    MODES,
    SETTINGS,
    Setting,
    SupervisorSettings,
    checked,
    config_error,
    declare,
    resolve_settings,
)
from supervisor.settings_kinds import (
    DELAY_S,
    ENV_NAME,
    TIMEOUT_S,
    Boolean,
    Choice,
    Integer,
    Invalid,
    Kind,
    LimitsKind,
    describe,
    unknown_key,
)
from supervisor.workflows.config import WorkflowConfig, parse_workflows

__all__ = [
    "SETTINGS",
    "ActorConfig",
    "Config",
    "ConfigError",
    "SupervisorSettings",
    "load_config",
]

ACTOR_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
OVERLAP_POLICIES = ("skip", "queue", "allow")
TOP_LEVEL = ("supervisor", "actors", "alerts", "workflows")
_PASSWORD = re.compile(r"^([a-z]+://[^:/@]*:)[^@]*@")


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorKeys:
    """The keys of one ``[[actors]]`` entry, resolved: absolute script, merged limits,
    effective mode. :class:`ActorConfig` adds what is derived from them.

    A ``command`` actor has its program's absolute path as ``script`` and its argv (the
    program first, as written) as ``command``; a script actor's ``command`` is empty.
    """

    name: str
    script: Path  # the Python script, or a command actor's program
    command: tuple[str, ...] = ()
    schedule: Schedule | None  # None: on demand only
    timezone: str = "UTC"
    mode: str
    timeout_s: float = 60.0
    input: Any = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    limits: Limits
    max_retries: int = 3
    retry_backoff_s: float = 2.0
    retry_backoff_max_s: float = 300.0
    retry_jitter: bool = True
    max_consecutive_failures: int
    breaker_cooldown_s: float | None = None  # None: no automatic half-open probe
    catch_up: str = "once"
    catch_up_max: int = 100
    overlap: str = "skip"
    exec_mode: str = "file"  # what runs: the file, the active stored code, or that else the file
    sync: str = "startup"  # when a changed file is recorded as a new version
    network: str = "host"  # none: an empty network namespace with only loopback (root only)
    alert_after_failures: int = 1  # a run_failed alert only from this many failures in a row


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorConfig(ActorKeys):
    """One ``[[actors]]`` entry, resolved, with what follows from its keys."""

    workdir: Path  # its runs' working directory: the script's folder, or the config's
    versioned: bool = True  # False: a command whose program lies outside the config's folder

    @property
    def python(self) -> bool:
        """A Python script (its imports are part of its code bundle), not a command."""
        return not self.command


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything the supervisor was configured with, validated once."""

    path: Path | None
    base_dir: Path
    supervisor: SupervisorSettings
    actors: dict[str, ActorConfig]
    alerts: tuple[AlertConfig, ...] = ()
    workflows: dict[str, WorkflowConfig] = field(default_factory=dict)
    sources: dict[str, str] = field(
        default_factory=dict
    )  # setting -> default|file|environment|flag
    # setting -> the label of the winning source: default, FILE: supervisor.KEY, ENV_VAR, --flag
    origins: dict[str, str] = field(default_factory=dict)
    # actor -> the keys its [[actors]] entry sets (the others are defaults or [supervisor]'s)
    actor_keys: dict[str, frozenset[str]] = field(default_factory=dict)


class _Text(Kind):
    """A string matched against a pattern (names)."""

    def __init__(self, pattern: re.Pattern[str], expected: str) -> None:
        self._pattern, self._expected = pattern, expected

    @property
    def expected(self) -> str:
        return self._expected

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not self._pattern.match(value):
            raise self._wrong(value)
        return value


class _EnvMap(Kind):
    @property
    def expected(self) -> str:
        return "a table of environment variables (strings)"

    def check(self, value: Any) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise self._wrong(value)
        for name, text in value.items():
            if not ENV_NAME.match(name):
                raise Invalid("not an environment variable name", name)
            if not isinstance(text, str) or "\0" in text:
                raise Invalid(f"expected a string, got {describe(text)}", name)
        return dict(value)


class _Script(Kind):
    """A script file, relative to the configuration's folder; resolved to an absolute path.

    A missing file is accepted: the database may hold the actor's code, and a deleted script
    must never stop the supervisor (the start-up sync reports it as ``file_missing``).
    """

    @property
    def expected(self) -> str:
        return "a path to a script"

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self._wrong(value)
        return value

    def resolve(self, value: Any, base_dir: Path) -> Path:
        path = Path(os.path.normpath(base_dir / Path(value).expanduser()))
        if path.exists() and not path.is_file():
            raise Invalid(f"not a regular file: {str(path)!r}")
        return path


class _Command(Kind):
    """A program and its arguments: ``["/path/prog", "arg", ...]``, exec'd without a shell.

    The program is resolved here, once: a path (with a ``/``) relative to the configuration's
    folder, like ``script``; a bare name on ``PATH`` (the actor's ``env``, else the
    supervisor's). Like a script, a program path that does not exist is accepted (its runs
    fail ``file_missing``; ``check`` reports it); a bare name not on ``PATH`` is an error.
    """

    @property
    def expected(self) -> str:
        return 'a non-empty array of strings, the program first, such as ["/bin/df", "-h"]'

    def check(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self._wrong(value)
        for index, arg in enumerate(value):
            if not isinstance(arg, str):
                raise Invalid(f"expected a string, got {describe(arg)}", index)
            if "\0" in arg:
                raise Invalid("contains a NUL character", index)
        if not value[0].strip():
            raise Invalid("the program is empty", 0)
        return tuple(value)

    def program(self, command: tuple[str, ...], base_dir: Path, path_env: str | None) -> Path:
        program = command[0]
        if "/" not in program:
            found = shutil.which(program, path=path_env)
            if found is None:
                where = path_env if path_env is not None else "(no PATH)"
                raise Invalid(f"{program!r} not found on PATH {where}; give its path", 0)
            return Path(found)
        path = Path(os.path.normpath(base_dir / Path(program).expanduser()))
        if path.exists() and not path.is_file():
            raise Invalid(f"not a regular file: {str(path)!r}", 0)
        return path


ACTOR_KEYS: tuple[Setting, ...] = declare(
    ActorKeys,
    [
        Setting("name", _Text(ACTOR_NAME, "a name of 1-200 characters [A-Za-z0-9_.-]"), ""),
        Setting("script", _Script(), "relative to the config file"),
        Setting("command", _Command(), "instead of script: a program and its arguments"),
        Setting("schedule", ScheduleTable(), "absent: on demand only"),
        Setting("timezone", Zone(), "of the schedule"),
        Setting("mode", Choice(MODES), "sandbox mode; default: [supervisor].mode"),
        Setting("timeout_s", TIMEOUT_S, "wall-clock limit of one run"),
        Setting("input", Json(), "the JSON document a scheduled run gets on stdin"),
        Setting("env", _EnvMap(), "added to the allow-listed environment"),
        Setting("limits", LimitsKind(), "merged over [supervisor].limits key by key"),
        Setting("max_retries", Integer(0), "retries of a retryable failure"),
        Setting("retry_backoff_s", DELAY_S, "first retry delay, doubled each time"),
        Setting("retry_backoff_max_s", DELAY_S, "cap of the retry delay"),
        Setting("retry_jitter", Boolean(), "full jitter on the retry delay"),
        Setting("max_consecutive_failures", Integer(0), "circuit breaker (0: never pause)"),
        Setting("breaker_cooldown_s", TIMEOUT_S, "half-open probe after a pause"),
        Setting("catch_up", Choice(CATCH_UP_POLICIES), "missed fires after downtime"),
        Setting("catch_up_max", Integer(1), "at most this many missed fires with 'all'"),
        Setting("overlap", Choice(OVERLAP_POLICIES), "a fire while the previous run is busy"),
        Setting("exec_mode", Choice(EXEC_MODES), "run the file, or the stored active version"),
        Setting("sync", Choice(SYNC_MODES), "when a changed file becomes a new version"),
        Setting("network", Choice(("host", "none")), "none: only loopback (needs root)"),
        Setting(
            "alert_after_failures", Integer(1), "run_failed alerts from this many failures in a row"
        ),
    ],
)
_ACTOR_KEYS = {s.name: s for s in ACTOR_KEYS}
_REQUIRED = ("name",)
_PROGRAMS = ("script", "command")  # exactly one


def load_config(
    path: Path | None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read, merge and validate the configuration; raise :class:`ConfigError` on any problem.

    ``path`` None means no file: defaults, environment and flags only, with the current
    directory as ``base_dir``. ``overrides`` are typed flag values (None: flag not given).
    ``environ`` defaults to ``os.environ``, read at call time.
    """
    document: dict[str, Any] = {}
    where = ""
    if path is not None:
        where = f"{path}: "
        document = _read(path)
        base_dir = path.absolute().parent
    else:
        base_dir = Path.cwd()
    for key in document:
        if key not in TOP_LEVEL:
            error = unknown_key(key, TOP_LEVEL, "top-level key")
            raise ConfigError(f"{where}{key}: {error.message}")
    table = document.get("supervisor", {})
    if not isinstance(table, Mapping):
        raise ConfigError(
            f"{where}supervisor: expected a table ([supervisor]), got {describe(table)}"
        )
    settings, sources, origins = resolve_settings(
        table,
        where=where,
        environ=os.environ if environ is None else environ,
        overrides=overrides or {},
        base_dir=base_dir,
    )
    entries = document.get("actors", [])
    actors = _actors(entries, where, settings, base_dir)
    alerts = parse_alerts(document.get("alerts", []), where, actors)
    return Config(
        path=path,
        base_dir=base_dir,
        supervisor=settings,
        actors=actors,
        alerts=alerts,
        workflows=parse_workflows(document.get("workflows", []), where, actors),
        sources=sources,
        origins=origins,
        actor_keys=_actor_keys(entries),
    )


def _actor_keys(entries: list[Mapping[str, Any]]) -> dict[str, frozenset[str]]:
    """Each actor's own keys (``_actors`` checked every entry). Actors mostly set the same few
    keys: one frozenset per distinct set, not per actor (100,000 actors: 36 MB less held, the
    sets and the key strings each entry's parse made; 21 MB less RSS)."""
    shared: dict[frozenset[str], frozenset[str]] = {}
    keys: dict[str, frozenset[str]] = {}
    for entry in entries:
        if isinstance(name := entry.get("name"), str):
            own = frozenset(entry)
            keys[name] = shared.setdefault(own, own)
    return keys


def _actors(
    entries: Any, where: str, settings: SupervisorSettings, base_dir: Path
) -> dict[str, ActorConfig]:
    """The ``[[actors]]`` array, each checked, names unique."""
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise ConfigError(
            f"{where}actors: expected an array of tables ([[actors]]), got {describe(entries)}"
        )
    actors: dict[str, ActorConfig] = {}
    first_seen: dict[str, int] = {}
    shared = _Shared()
    for index, entry in enumerate(entries):
        actor = _actor(entry, f"{where}actors[{index}]", settings, base_dir, shared)
        if actor.name in first_seen:
            raise ConfigError(
                f"{where}actors[{index}] ({actor.name}).name: duplicate actor name "
                f"{actor.name!r} (first defined at actors[{first_seen[actor.name]}])"
            )
        first_seen[actor.name] = index
        actors[actor.name] = actor
    return actors


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 ({exc.reason})") from None


class _Shared:
    """What many actors of one file have in common, worked out once and shared: a script's
    resolved path (a ``stat``), merged limits, an empty ``input`` or ``env``. 100,000 actors on
    a few scripts then cost a few paths, not 100,000 (and as many ``stat`` calls)."""

    __slots__ = ("limits", "scripts")

    def __init__(self) -> None:
        self.scripts: dict[str, tuple[Path, Path]] = {}  # as written -> (script, its folder)
        self.limits: dict[tuple[tuple[str, Any], ...], Limits] = {}

    def script(self, value: str, label: str, base_dir: Path) -> tuple[Path, Path]:
        found = self.scripts.get(value)
        if found is None:
            script = checked(_Script().resolve, value, label, base_dir)
            found = self.scripts[value] = (script, script.parent)
        return found

    def merged_limits(self, default: Limits, given: Mapping[str, Any]) -> Limits:
        key = tuple(sorted(given.items()))
        limits = self.limits.get(key)
        if limits is None:
            limits = self.limits[key] = LimitsKind().combine(default, [given])
        return limits


_NO_INPUT: dict[str, Any] = {}  # shared by every actor without one: never mutated
_NO_ENV: dict[str, str] = {}


def _actor(
    entry: Mapping[str, Any],
    label: str,
    sup: SupervisorSettings,
    base_dir: Path,
    shared: "_Shared | None" = None,
) -> ActorConfig:
    """One ``[[actors]]`` table -> :class:`ActorConfig`; ``label`` is ``file: actors[i]``."""
    name = entry.get("name")
    if isinstance(name, str) and ACTOR_NAME.match(name):
        label = f"{label} ({name})"
    for key in entry:
        if key not in _ACTOR_KEYS:
            raise config_error(label, unknown_key(key, _ACTOR_KEYS))
    for key in _REQUIRED:
        if key not in entry:
            raise ConfigError(
                f"{label}.{key}: missing; every actor needs {' and '.join(_REQUIRED)}"
            )
    shared = shared or _Shared()
    values: dict[str, Any] = {}
    for key, raw in entry.items():
        values[key] = checked(_ACTOR_KEYS[key].kind.check, raw, f"{label}.{key}")
    _program(values, label, base_dir, shared)
    size = len(orjson.dumps(values["input"]).decode()) if "input" in values else 0
    if size > MAX_INPUT_CHARS:  # a worker would refuse every run of it
        raise ConfigError(
            f"{label}.input: {size} characters as JSON, more than a worker accepts "
            f"({MAX_INPUT_CHARS})"
        )
    timezone = values.setdefault("timezone", _ACTOR_KEYS["timezone"].default)
    values["schedule"] = _schedule(values.get("schedule"), f"{label}.schedule", timezone)
    _check_interval(values["schedule"], f"{label}.schedule.seconds", sup.allow_subsecond)
    values["limits"] = shared.merged_limits(sup.limits, values.get("limits", {}))
    if values.setdefault("input", _NO_INPUT) == {}:
        values["input"] = _NO_INPUT
    values["env"] = values.get("env") or _NO_ENV
    values.setdefault("mode", sup.mode)
    values.setdefault("max_consecutive_failures", sup.max_consecutive_failures)
    base = values.get("retry_backoff_s", _ACTOR_KEYS["retry_backoff_s"].default)
    cap = values.get("retry_backoff_max_s", _ACTOR_KEYS["retry_backoff_max_s"].default)
    if cap < base:
        raise ConfigError(
            f"{label}.retry_backoff_max_s: must be >= retry_backoff_s ({base}), got {cap}"
        )
    return ActorConfig(**values)


def _program(values: dict[str, Any], label: str, base_dir: Path, shared: _Shared) -> None:
    """Resolve ``script`` or ``command`` (exactly one) into ``script``, ``workdir`` and
    ``versioned``: a command's program is versioned when it lies in the config's folder tree."""
    given = [key for key in _PROGRAMS if key in values]
    if not given:
        raise ConfigError(
            f"{label}.script: missing; every actor needs a `script` (a Python file) or a "
            "`command` (a program and its arguments)"
        )
    if len(given) > 1:
        raise ConfigError(
            f"{label}.command: give either `script` or `command`, not both (a Python script "
            'runs as `script = "x.py"`; any other program as `command = ["prog", "arg"]`)'
        )
    if "script" in values:
        script, workdir = shared.script(values["script"], f"{label}.script", base_dir)
        values.update(script=script, workdir=workdir)
        return
    command = values["command"]
    path_env = values.get("env", {}).get("PATH", os.environ.get("PATH"))
    program = checked(_Command().program, command, f"{label}.command", base_dir, path_env)
    if values.get("exec_mode", "file") != "file":
        raise ConfigError(
            f"{label}.exec_mode: a command actor runs its program file; exec_mode "
            f"{values['exec_mode']!r} (stored code) applies to Python scripts only"
        )
    inside = program.is_relative_to(base_dir)
    values.update(script=program, workdir=base_dir, versioned=inside)


MIN_INTERVAL_S = 1.0  # shorter only with allow_subsecond = true
MIN_SUBSECOND_INTERVAL_S = 0.01  # even then: each fire costs a row and an event or two


def _check_interval(schedule: Schedule | None, label: str, allow_subsecond: bool) -> None:
    if not isinstance(schedule, IntervalSchedule):
        return
    seconds = schedule.seconds
    if not allow_subsecond and seconds < MIN_INTERVAL_S:
        raise ConfigError(
            f"{label}: must be >= {MIN_INTERVAL_S:g} (set allow_subsecond = true in "
            f"[supervisor] for shorter intervals), got {seconds:g}"
        )
    if seconds < MIN_SUBSECOND_INTERVAL_S:
        raise ConfigError(f"{label}: must be >= {MIN_SUBSECOND_INTERVAL_S:g}, got {seconds:g}")


def _schedule(value: Mapping[str, Any] | None, label: str, timezone: str) -> Schedule | None:
    if value is None:
        return None
    try:
        return parse_schedule(value, timezone)
    except ScheduleError as exc:
        inner = f".{exc.key}" if exc.key else ""
        raise ConfigError(f"{label}{inner}: {exc.message}") from None


# actor keys whose default is a [supervisor] setting of the same name
INHERITED_ACTOR_KEYS = ("mode", "limits", "max_consecutive_failures")


def actor_origins(config: Config, name: str) -> dict[str, tuple[str, str]]:
    """Where each key of actor ``name`` came from, as (source, label): ``file`` (its
    ``[[actors]]`` entry), ``supervisor`` (the ``[supervisor]`` setting it inherits; the label
    says where that came from) or ``default``. ``limits`` set in both merge; ``file`` wins."""
    where = f"{config.path}: " if config.path is not None else ""
    index = list(config.actors).index(name)
    keys = config.actor_keys.get(name, frozenset())
    origins: dict[str, tuple[str, str]] = {}
    for spec in ACTOR_KEYS:
        if spec.name in keys:
            origins[spec.name] = ("file", f"{where}actors[{index}].{spec.name}")
        elif spec.name in INHERITED_ACTOR_KEYS:
            label = f"[supervisor] {spec.name} ({config.origins[spec.name]})"
            origins[spec.name] = ("supervisor", label)
        else:
            origins[spec.name] = ("default", "default")
    return origins
