"""Value kinds and setting declarations: how one setting is read, checked and shown.

A :class:`Setting` declares a name, a :class:`Kind` (type, range, parser), help text and an
optional CLI flag; its default comes from the dataclass the table describes, so nothing is
declared twice. The same kinds check ``[supervisor]`` keys, ``ACTOR_SUPERVISOR_*`` variables,
flag overrides and ``[[actors]]`` keys. Checks raise :class:`Invalid`; the loader adds the file
and key path to turn it into a ``ConfigError``.
"""

import abc
import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from protocol.messages import LIMIT_CAPS, Limits
from supervisor.errors import ConfigError
from supervisor.schedule import did_you_mean

ENV_PREFIX = "ACTOR_SUPERVISOR_"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The minimums protocol.messages.Limits.read enforces on the wire: checking them here turns a
# RUN message a worker would refuse into a configuration error at start-up.
LIMIT_MINIMUMS = {
    "cpu_s": 1, "memory_mb": 16, "nofile": 8, "nproc": 1, "fsize_mb": 0, "output_kb": 1,
    "stderr_kb": 0,
}  # fmt: skip
UNLIMITED = "unlimited"
STATE_DIR = "state"  # beside the config file: store, spool, control socket and keys (0700)
IPC_PATH_MAX = 107  # bytes: a unix socket path must fit sockaddr_un.sun_path with its NUL
# The longest duration a setting may hold: every timer of the supervisor, the worker and the
# launcher must be able to wait that long (epoll's timeout overflows near 24.8 days, and a
# retry time must stay a representable timestamp).
MAX_DURATION_S = 7 * 86400.0


class Invalid(ValueError):
    """A value failed its check; ``path`` names the entry inside it (``("cpu_s",)``, ``(2,)``)."""

    def __init__(self, message: str, *path: str | int) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def under(self, *keys: str | int) -> "Invalid":
        """The same error, one or more levels further down."""
        return Invalid(self.message, *keys, *self.path)


def key_path(*parts: str | int) -> str:
    """``("actors", 2, "limits", "cpu_s")`` -> ``"actors[2].limits.cpu_s"``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def describe(value: Any) -> str:
    """How a found value is shown in errors: ``string '4'``, ``boolean true``, ``a table``."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, datetime | date | time):
        return f"date-time {value.isoformat()}"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def unknown_key(key: str, allowed: Iterable[str], what: str = "key") -> Invalid:
    """An error for an unexpected key, with a did-you-mean and the allowed keys."""
    names = sorted(allowed)
    hint = did_you_mean(key, names)
    hint_text = f" (did you mean {hint!r}?)" if hint else ""
    return Invalid(f"unknown {what}{hint_text}; allowed: {', '.join(names)}", key)


class Kind(abc.ABC):
    """How the values of one setting are checked, parsed from text, merged and shown."""

    @property
    @abc.abstractmethod
    def expected(self) -> str:
        """What a valid value looks like, for errors and ``--help``."""

    @abc.abstractmethod
    def check(self, value: Any) -> Any:
        """A value from the file or a flag, checked and normalized; raises :class:`Invalid`."""

    def parse(self, text: str) -> Any:
        """A value from an environment variable."""
        return self.check(text)

    def combine(self, default: Any, layers: Sequence[Any]) -> Any:
        """The effective value from checked layers, lowest precedence first."""
        return layers[-1] if layers else default

    def resolve(self, value: Any, base_dir: Path) -> Any:
        """A final check that needs the configuration's folder (paths)."""
        return value

    def to_json(self, value: Any) -> Any:
        return value

    def _wrong(self, value: Any) -> Invalid:
        return Invalid(f"expected {self.expected}, got {describe(value)}")


@dataclass(frozen=True, slots=True)
class Integer(Kind):
    minimum: int | None = None
    maximum: int | None = None

    @property
    def expected(self) -> str:
        return "an integer" + _bounds(self.minimum, self.maximum)

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, got {describe(value)}")
        _check_range(value, self.minimum, self.maximum)
        return value

    def parse(self, text: str) -> int:
        try:
            number = int(text.strip())
        except ValueError:
            raise Invalid(f"expected an integer, got {text!r}") from None
        return self.check(number)


@dataclass(frozen=True, slots=True)
class Number(Kind):
    """A finite number of seconds, milliseconds, ...; integers are accepted and made floats."""

    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False  # strictly greater than zero

    @property
    def expected(self) -> str:
        return "a positive number" if self.positive else "a number" + _bounds(self.minimum, None)

    def check(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong(value)
        number = float(value)
        if not math.isfinite(number):
            raise Invalid(f"expected a finite number, got {value}")
        if self.positive and number <= 0:
            raise Invalid(f"must be > 0, got {value}")
        if self.maximum is not None and number > self.maximum:
            days = f" ({self.maximum / 86400:g} days)" if self.maximum >= 86400 else ""
            raise Invalid(f"must be <= {self.maximum:g}{days}, got {value}")
        _check_range(number, self.minimum, None)
        return number

    def parse(self, text: str) -> float:
        try:
            number = float(text.strip())
        except ValueError:
            raise Invalid(f"expected a number, got {text!r}") from None
        return self.check(number)


@dataclass(frozen=True, slots=True)
class Boolean(Kind):
    @property
    def expected(self) -> str:
        return "true or false"

    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self._wrong(value)
        return value

    def parse(self, text: str) -> bool:
        folded = text.strip().lower()
        if folded in ("1", "true", "yes", "on"):
            return True
        if folded in ("0", "false", "no", "off"):
            return False
        raise Invalid(f"expected true or false, got {text!r}")


@dataclass(frozen=True, slots=True)
class Choice(Kind):
    """One of a few words; matched case-insensitively and stored in lower case."""

    choices: tuple[str, ...]

    @property
    def expected(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self._wrong(value)
        folded = value.strip().lower()
        if folded not in self.choices:
            raise self._wrong(value)
        return folded


@dataclass(frozen=True, slots=True)
class Names(Kind):
    """Environment variable names: an array in the file, comma-separated in the environment."""

    @property
    def expected(self) -> str:
        return "an array of environment variable names"

    def check(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list | tuple):
            raise self._wrong(value)
        names: dict[str, None] = {}
        for index, name in enumerate(value):
            if not isinstance(name, str) or not ENV_NAME.match(name):
                glob = " (globs are not supported: list each name)" if "*" in str(name) else ""
                raise Invalid(
                    f"expected an environment variable name{glob}, got {describe(name)}", index
                )
            names[name] = None
        return tuple(names)

    def parse(self, text: str) -> tuple[str, ...]:
        return self.check([part.strip() for part in text.split(",") if part.strip()])

    def to_json(self, value: Any) -> Any:
        return list(value)


@dataclass(frozen=True, slots=True)
class LimitsKind(Kind):
    """Resource limits, merged key by key over the layers below (defaults, then wider scopes).

    In TOML there is no null, so ``"unlimited"`` leaves an optional limit unset.
    """

    @property
    def expected(self) -> str:
        return "a table of limits (" + ", ".join(Limits.NAMES) + ")"

    def check(self, value: Any) -> dict[str, int | None]:
        if isinstance(value, Limits):
            return {name: getattr(value, name) for name in Limits.NAMES}
        if not isinstance(value, Mapping):
            raise self._wrong(value)
        checked: dict[str, int | None] = {}
        for name, limit in value.items():
            if name not in LIMIT_MINIMUMS:
                raise unknown_key(name, Limits.NAMES, "limit")
            checked[name] = self._limit(name, limit)
        return checked

    def parse(self, text: str) -> dict[str, int | None]:
        pairs: dict[str, Any] = {}
        for item in (part.strip() for part in text.split(",")):
            name, sep, raw = item.partition("=")
            if not item:
                continue
            if not sep:
                raise Invalid(f"expected name=value pairs such as 'cpu_s=10', got {item!r}")
            raw = raw.strip()
            pairs[name.strip()] = raw if raw == UNLIMITED else Integer().parse(raw)
        return self.check(pairs)

    def combine(self, default: Any, layers: Sequence[Any]) -> Limits:
        merged: dict[str, Any] = {}
        for layer in layers:
            merged.update(layer)
        base: Limits = default
        return dataclasses.replace(base, **merged)

    def to_json(self, value: Any) -> Any:
        return {name: getattr(value, name) for name in Limits.NAMES}

    @staticmethod
    def _limit(name: str, value: Any) -> int | None:
        optional = name not in ("output_kb", "stderr_kb")
        if optional and value == UNLIMITED:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            unset = f" or {UNLIMITED!r}" if optional else ""
            raise Invalid(f"expected an integer{unset}, got {describe(value)}", name)
        if value < LIMIT_MINIMUMS[name]:
            raise Invalid(f"must be >= {LIMIT_MINIMUMS[name]}, got {value}", name)
        if name in LIMIT_CAPS and value > LIMIT_CAPS[name]:  # what Limits.read accepts
            raise Invalid(f"must be <= {LIMIT_CAPS[name]}, got {value}", name)
        return value


@dataclass(frozen=True, slots=True)
class PublicUrl(Kind):
    """An http(s) base URL, or unset."""

    @property
    def expected(self) -> str:
        return "an http:// or https:// URL"

    def check(self, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+(/\S*)?$", value):
            raise self._wrong(value)
        return value.rstrip("/")


@dataclass(frozen=True, slots=True)
class Endpoint(Kind):
    """A ZeroMQ endpoint the supervisor binds and clients connect to; kept as written (a relative
    ``ipc://`` path is resolved where it is used, by :func:`resolve_endpoint`)."""

    @property
    def expected(self) -> str:
        return "a ZeroMQ endpoint 'tcp://HOST:PORT' or 'ipc://PATH'"

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self._wrong(value)
        if value.startswith("ipc://") and len(value) > len("ipc://"):
            return value
        match = _TCP.match(value)
        if not match or not 1 <= int(match["port"]) <= 65535:
            raise self._wrong(value)
        return value


def resolve_endpoint(endpoint: str, base_dir: Path) -> str:
    """``endpoint`` with a relative ``ipc://`` path made absolute against the configuration's
    folder (as ``database`` is), so the supervisor and the CLI find the same socket from any
    working directory.

    :raises ConfigError: the socket path is longer than a unix socket address can hold.
    """
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):  # tcp, abstract
        return endpoint
    path = os.path.normpath(base_dir / Path(endpoint[len("ipc://") :]).expanduser())
    size = len(os.fsencode(path))
    if size > IPC_PATH_MAX:
        raise ConfigError(
            f"control: the socket path {path!r} is {size} bytes, more than a unix socket "
            f"address holds ({IPC_PATH_MAX}); move the configuration to a shorter folder or "
            "choose another endpoint with --control"
        )
    return f"ipc://{path}"


_TCP = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(?P<port>\d{1,5})$")


def is_loopback(endpoint: str) -> bool:
    """Whether an endpoint is reachable only from this host (ipc, or tcp on loopback)."""
    match = _TCP.match(endpoint)
    if match is None:
        return endpoint.startswith("ipc://")
    host = match["host"].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name or '*': other hosts may reach it
        return False


@dataclass(frozen=True, slots=True)
class HttpListen(Kind):
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) the operator HTTP server listens on; empty: off."""

    @property
    def expected(self) -> str:
        return "'HOST:PORT' (such as '127.0.0.1:8080') or '' (off)"

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self._wrong(value)
        text: str = value.strip()
        if text and split_listen(text) is None:
            raise self._wrong(value)
        return text


def split_listen(listen: str) -> tuple[str, int] | None:
    """``"127.0.0.1:8080"`` -> ``("127.0.0.1", 8080)``; None when malformed."""
    match = _TCP.match("tcp://" + listen)
    if match is None or not 0 <= int(match["port"]) <= 65535:
        return None
    return match["host"].strip("[]"), int(match["port"])


@dataclass(frozen=True, slots=True)
class Database(Kind):
    """Kept as written: the store resolves a relative SQLite path against the config folder."""

    @property
    def expected(self) -> str:
        return "'sqlite:PATH' or 'postgresql://...'"

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self._wrong(value)
        if value.startswith("sqlite:") and value[len("sqlite:") :].strip():
            return value
        if value.startswith(("postgresql://", "postgres://")):
            return value
        raise self._wrong(value)


@dataclass(frozen=True, slots=True)
class Folder(Kind):
    """A folder, kept as written: its user resolves a relative one against the config folder
    (as ``database`` does), so the defaults compare equal whatever the working directory."""

    @property
    def expected(self) -> str:
        return "a path to a folder"

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise self._wrong(value)
        return value


@dataclass(frozen=True, slots=True)
class Word(Kind):
    """A non-empty string without whitespace (a user name, a uid)."""

    @property
    def expected(self) -> str:
        return "a non-empty word"

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not value or any(c.isspace() for c in value):
            raise self._wrong(value)
        return value


@dataclass(frozen=True, slots=True)
class UidRange(Kind):
    """``"LOW-HIGH"``: a block of uids (each also used as a gid), neither 0 nor past 2^31."""

    @property
    def expected(self) -> str:
        return "'LOW-HIGH', two uids with 1 <= LOW <= HIGH < 2^31"

    def check(self, value: Any) -> tuple[int, int]:
        if isinstance(value, tuple | list) and len(value) == 2:
            value = f"{value[0]}-{value[1]}"
        if not isinstance(value, str):
            raise self._wrong(value)
        low, sep, high = value.strip().partition("-")
        if not (sep and low.strip().isdigit() and high.strip().isdigit()):
            raise self._wrong(value)
        bounds = (int(low), int(high))
        if not 1 <= bounds[0] <= bounds[1] < 1 << 31:
            raise self._wrong(value)
        return bounds

    def to_json(self, value: Any) -> Any:
        return f"{value[0]}-{value[1]}"


@dataclass(frozen=True, slots=True)
class OptionalPath(Kind):
    """A path that must exist, relative to the configuration's folder; stored absolute."""

    directory_ok: bool = False

    @property
    def expected(self) -> str:
        return "a path to a file or directory" if self.directory_ok else "a path to a file"

    def check(self, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self._wrong(value)
        return value

    def resolve(self, value: Any, base_dir: Path) -> Any:
        if value is None:
            return None
        path = (base_dir / Path(value).expanduser()).absolute()
        if not path.exists():
            raise Invalid(f"no such file: {str(path)!r}")
        if not path.is_file() and not (self.directory_ok and path.is_dir()):
            raise Invalid(f"expected {self.expected}, got {str(path)!r}")
        return str(path)


@dataclass(frozen=True, slots=True)
class Setting:
    """One declared setting: it drives the file key, the environment variable and the flag."""

    name: str
    kind: Kind
    help: str
    flag: str | None = None
    default: Any = None  # filled from the dataclass the table describes

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()


def declare(cls: type, settings: Sequence[Setting]) -> tuple[Setting, ...]:
    """Fill each setting's default from ``cls``; both must name the same fields, in order."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = [s.name for s in settings]
    if names != list(fields):
        raise TypeError(f"settings table and {cls.__name__} disagree: {names} vs {list(fields)}")
    declared = []
    for setting in settings:
        spec = fields[setting.name]
        default: Any = spec.default
        if spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        declared.append(dataclasses.replace(setting, default=default))
    return tuple(declared)


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    return ""


def _check_range(value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise Invalid(f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise Invalid(f"must be <= {maximum}, got {value}")


# --- [supervisor] -----------------------------------------------------------------------------

DEFAULT_ENV_ALLOW: tuple[str, ...] = (
    "PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_ADDRESS", "LC_COLLATE", "LC_CTYPE",
    "LC_IDENTIFICATION", "LC_MEASUREMENT", "LC_MESSAGES", "LC_MONETARY", "LC_NAME",
    "LC_NUMERIC", "LC_PAPER", "LC_TELEPHONE", "LC_TIME", "TZ", "TERM", "TMPDIR",
    "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONDONTWRITEBYTECODE",
)  # fmt: skip
"""What scripts inherit by default: locale and paths only, never credentials (no HOME either:
scripts may run as another user)."""

MODES = ("fork", "exec")


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorSettings:
    """The validated ``[supervisor]`` table; see :data:`SETTINGS` for what each one means."""

    workers: int = 2
    concurrency: int = 1
    mode: str = "fork"
    control: str = f"ipc://{STATE_DIR}/control.sock"
    database: str = f"sqlite:{STATE_DIR}/actor-supervisor.db"
    shutdown_grace_s: float = 10.0
    kill_grace_s: float = 2.0
    run_as: str = "nobody"
    run_as_range: tuple[int, int] = (61184, 61439)
    allow_root_scripts: bool = False
    python: str | None = None
    queue_size: int = 10000
    batch_size: int = 1000
    batch_max_age_ms: float = 20.0
    heartbeat_timeout_s: float = 30.0
    log_level: str = "info"
    log_format: str = "text"
    http_listen: str = ""
    http_token_file: str | None = None
    env_allow: tuple[str, ...] = DEFAULT_ENV_ALLOW
    limits: Limits = field(default_factory=Limits)
    max_consecutive_failures: int = 5
    alert_repeat_s: float = 300.0
    public_url: str | None = None
    sqlite_synchronous: str = "normal"
    pool_min_size: int = 1
    pool_max_size: int = 4
    pool_connect_timeout_s: float = 5.0
    pool_acquire_timeout_s: float = 5.0
    pool_check: bool = True
    database_wait_s: float = 60.0
    lease_ttl_s: float = 10.0
    queue_max_bytes: int = 256 * 1024 * 1024
    allow_subsecond: bool = False
    migrate: bool = True
    spool_dir: str = f"{STATE_DIR}/spool"
    control_curve_secret_key: str | None = None
    control_curve_authorized_keys: str | None = None
    control_curve_server_key: str | None = None
    control_curve_client_key: str | None = None


SETTINGS: tuple[Setting, ...] = declare(
    SupervisorSettings,
    [
        Setting("workers", Integer(1, 1024), "worker processes", "--workers"),
        Setting("concurrency", Integer(1, 1024), "runs in flight per worker", "--concurrency"),
        Setting("mode", Choice(MODES), "default sandbox mode of actors", "--mode"),
        Setting("control", Endpoint(), "control endpoint for clients and the CLI", "--control"),
        Setting(
            "database",
            Database(),
            "'sqlite:PATH' (relative to the config file) or a postgresql:// URL",
            "--database",
        ),
        Setting(
            "shutdown_grace_s",
            Number(minimum=0, maximum=MAX_DURATION_S),
            "seconds in-flight runs get on shutdown",
        ),
        Setting(
            "kill_grace_s",
            Number(minimum=0, maximum=MAX_DURATION_S),
            "SIGTERM -> SIGKILL delay on a timeout",
        ),
        Setting("run_as", Word(), "a fixed user scripts run as when root (default: run_as_range)"),
        Setting(
            "run_as_range",
            UidRange(),
            "root: uids LOW-HIGH, no account's, one per running run (systemd DynamicUser style)",
        ),
        Setting("allow_root_scripts", Boolean(), "accept run_as = root (scripts then run as root)"),
        Setting(
            "python",
            OptionalPath(),
            "interpreter for exec mode (default: the supervisor's own, else python3 on PATH)",
        ),
        Setting("queue_size", Integer(1), "bounded ready queue; beyond it submissions get busy"),
        Setting("batch_size", Integer(1), "store writer: rows per batch"),
        Setting("batch_max_age_ms", Number(minimum=0), "store writer: flush a batch this old"),
        Setting(
            "heartbeat_timeout_s",
            Number(positive=True, maximum=MAX_DURATION_S),
            "a silent worker is replaced",
        ),
        Setting(
            "log_level", Choice(("debug", "info", "warning", "error")), "log level", "--log-level"
        ),
        Setting("log_format", Choice(("text", "json")), "log line format", "--log-format"),
        Setting(
            "http_listen",
            HttpListen(),
            "HOST:PORT of the operator HTTP server (health, metrics, API, dashboard); off if empty",
            "--http",
        ),
        Setting(
            "http_token_file",
            OptionalPath(),
            "file holding the HTTP bearer token (required when http_listen is not loopback)",
        ),
        Setting("env_allow", Names(), "environment names scripts inherit (comma-separated)"),
        Setting("limits", LimitsKind(), "default resource limits of every actor (name=value,...)"),
        Setting(
            "max_consecutive_failures",
            Integer(0),
            "default circuit breaker: pause an actor after this many failures (0: never)",
        ),
        Setting(
            "alert_repeat_s",
            Number(minimum=0),
            "alerts: repeats of one (event, actor) within this many seconds fold into one",
        ),
        Setting(
            "public_url",
            PublicUrl(),
            "base URL of the HTTP server, for the link in alerts (none: no link)",
        ),
        Setting(
            "sqlite_synchronous", Choice(("off", "normal", "full")), "SQLite PRAGMA synchronous"
        ),
        Setting("pool_min_size", Integer(0, 1000), "PostgreSQL: connections kept open"),
        Setting("pool_max_size", Integer(1, 1000), "PostgreSQL: most connections open at once"),
        Setting(
            "pool_connect_timeout_s",
            Number(positive=True),
            "PostgreSQL: seconds one connection attempt may take",
        ),
        Setting(
            "pool_acquire_timeout_s",
            Number(positive=True),
            "PostgreSQL: seconds a flush waits for a pooled connection before it spools",
        ),
        Setting(
            "pool_check",
            Boolean(),
            "PostgreSQL: check each connection as it leaves the pool (a broken one is replaced)",
        ),
        Setting(
            "database_wait_s",
            Number(minimum=0),
            "start-up: seconds to keep retrying an unreachable database before giving up",
        ),
        Setting(
            "lease_ttl_s",
            Number(minimum=1, maximum=3600),
            "PostgreSQL: the store lease's time to live; a standby takes over at most this "
            "long after the holder died",
        ),
        Setting(
            "queue_max_bytes",
            Integer(1024, 64 * 1024**3),
            "bytes of queued inputs held in memory; beyond it submissions get busy",
        ),
        Setting(
            "allow_subsecond",
            Boolean(),
            "allow interval schedules shorter than 1 second",
        ),
        Setting("migrate", Boolean(), "apply pending migrations at start-up"),
        Setting(
            "spool_dir",
            Folder(),
            "where batches wait while the database is unreachable (relative to the config file)",
        ),
        Setting("control_curve_secret_key", OptionalPath(), "CURVE secret key file (server)"),
        Setting(
            "control_curve_authorized_keys",
            OptionalPath(directory_ok=True),
            "CURVE public keys allowed to connect (file or directory)",
        ),
        Setting(
            "control_curve_server_key",
            OptionalPath(),
            "clients: the supervisor's CURVE public key file",
        ),
        Setting(
            "control_curve_client_key",
            OptionalPath(),
            "clients: this client's CURVE secret key file",
        ),
    ],
)
SETTINGS_BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}


def resolve_settings(
    table: Mapping[str, Any],
    *,
    where: str,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any],
    base_dir: Path,
) -> tuple[SupervisorSettings, dict[str, str]]:
    """Merge default, file (``table``), environment and flags, in rising precedence.

    ``where`` prefixes file errors (``"supervisor.toml: "``). An empty environment variable
    counts as unset, and so does a ``None`` override. Returns the settings and, for each,
    where its value came from: ``default``, ``file``, ``environment`` or ``flag``.
    """
    for name in overrides:
        if name not in SETTINGS_BY_NAME:
            raise config_error("overrides", unknown_key(name, SETTINGS_BY_NAME, "setting"))
    for key in table:
        if key not in SETTINGS_BY_NAME:
            error = unknown_key(key, SETTINGS_BY_NAME)
            raise config_error(f"{where}supervisor", error)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    labels: dict[str, str] = {}
    for setting in SETTINGS:
        layers: list[tuple[str, str, Any]] = []  # (source, label, checked value)
        if setting.name in table:
            label = f"{where}supervisor.{setting.name}"
            layers.append(("file", label, checked(setting.kind.check, table[setting.name], label)))
        text = environ.get(setting.env_var, "")
        if text.strip():
            label = setting.env_var
            layers.append(("environment", label, checked(setting.kind.parse, text, label)))
        if overrides.get(setting.name) is not None:
            label = setting.flag or f"override {setting.name}"
            value = overrides[setting.name]
            layers.append(("flag", label, checked(setting.kind.check, value, label)))
        value = setting.kind.combine(setting.default, [layer[2] for layer in layers])
        source, label = (layers[-1][0], layers[-1][1]) if layers else ("default", "default")
        values[setting.name] = checked(setting.kind.resolve, value, label, base_dir)
        sources[setting.name], labels[setting.name] = source, label
    settings = SupervisorSettings(**values)
    _check_control(settings, labels)
    _check_pool(settings, labels)
    _check_run_as_range(settings, labels)
    return settings, sources


def _check_pool(settings: SupervisorSettings, labels: Mapping[str, str]) -> None:
    if settings.pool_min_size > settings.pool_max_size:
        raise ConfigError(
            f"{labels['pool_min_size']}: pool_min_size ({settings.pool_min_size}) must be <= "
            f"pool_max_size ({settings.pool_max_size})"
        )


def _check_run_as_range(settings: SupervisorSettings, labels: Mapping[str, str]) -> None:
    """Every run that may be in flight at once needs a uid of its own."""
    low, high = settings.run_as_range
    needed = settings.workers * settings.concurrency
    if high - low + 1 < needed:
        raise ConfigError(
            f"{labels['run_as_range']}: run_as_range '{low}-{high}' holds {high - low + 1} uids; "
            f"workers x concurrency ({settings.workers} x {settings.concurrency}) needs {needed}"
        )


def _check_control(settings: SupervisorSettings, labels: Mapping[str, str]) -> None:
    """CURVE keys come in pairs: the server's two, and a client's two.

    Whether an endpoint reachable from other hosts has its keys is checked where the role is
    known: by ``start`` for the server (:func:`require_server_curve`) and by the client.
    """
    pairs = [
        ("control_curve_secret_key", "control_curve_authorized_keys"),
        ("control_curve_server_key", "control_curve_client_key"),
    ]
    for first, second in pairs:
        one, other = getattr(settings, first), getattr(settings, second)
        if (one is None) != (other is None):
            given, missing = (first, second) if other is None else (second, first)
            raise ConfigError(f"{labels[given]}: CURVE needs {missing} as well")


def require_curve(settings: SupervisorSettings, *, server: bool) -> None:
    """Refuse a control endpoint reachable from other hosts without CURVE keys for this role."""
    if is_loopback(settings.control):
        return
    keys = (
        ("control_curve_secret_key", "control_curve_authorized_keys")
        if server
        else ("control_curve_server_key", "control_curve_client_key")
    )
    if getattr(settings, keys[0]) is None:
        raise ConfigError(
            f"control: {settings.control!r} is reachable from other hosts; set {keys[0]} and "
            f"{keys[1]} (CURVE), or use a loopback or ipc:// endpoint"
        )


def checked(check: Callable[..., Any], value: Any, label: str, *args: Any) -> Any:
    """``check(value, *args)``, with an :class:`Invalid` turned into a located ConfigError."""
    try:
        return check(value, *args)
    except Invalid as exc:
        raise config_error(label, exc) from None


def config_error(label: str, error: Invalid) -> ConfigError:
    """``label`` plus the error's inner key path, then the message."""
    inner = key_path(*error.path)
    if inner and not inner.startswith("["):
        inner = "." + inner
    return ConfigError(f"{label}{inner}: {error.message}")
