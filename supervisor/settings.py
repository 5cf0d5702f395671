"""Setting declarations and the ``[supervisor]`` table: how one setting is read and shown.

A :class:`Setting` declares a name, a :class:`Kind` (type, range, parser), help text and an
optional CLI flag; its default comes from the dataclass the table describes, so nothing is
declared twice. The same kinds check ``[supervisor]`` keys, ``ACTOR_SUPERVISOR_*`` variables,
flag overrides and ``[[actors]]`` keys. Checks raise :class:`Invalid`; the loader adds the file
and key path to turn it into a ``ConfigError``.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.messages import Limits
from supervisor.errors import ConfigError
from supervisor.settings_addresses import (
    Endpoint,
    HttpListen,
    is_loopback,
)
from supervisor.settings_kinds import (
    DELAY_S,
    ENV_PREFIX,
    MODULES,
    STATE_DIR,
    TIMEOUT_S,
    Boolean,
    Choice,
    Database,
    Folder,
    Integer,
    Invalid,
    Kind,
    LimitsKind,
    Names,
    Number,
    OptionalPath,
    PublicUrl,
    UidRange,
    Word,
    key_path,
    unknown_key,
)
from workers.preload import DEFAULT_PRELOAD


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
    preload: tuple[str, ...] = DEFAULT_PRELOAD
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
    retention_days: int = 0
    retention_keep_failed_days: int = 0
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
        Setting("shutdown_grace_s", DELAY_S, "seconds in-flight runs get on shutdown"),
        Setting("kill_grace_s", DELAY_S, "SIGTERM -> SIGKILL delay on a timeout"),
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
        Setting("heartbeat_timeout_s", TIMEOUT_S, "a silent worker is replaced"),
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
        Setting(
            "preload",
            MODULES,
            "modules each launcher imports once, so fork-mode scripts find them loaded",
        ),
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
        Setting(
            "migrate",
            Boolean(),
            "apply pending migrations at start-up",
            "--no-migrate",
        ),
        Setting(
            "spool_dir",
            Folder(),
            "where batches wait while the database is unreachable (relative to the config file)",
        ),
        Setting(
            "retention_days",
            Integer(0, 100 * 365),
            "delete finished runs and their events this many days old, in small batches "
            "(0: keep forever); code history is never deleted",
        ),
        Setting(
            "retention_keep_failed_days",
            Integer(0, 100 * 365),
            "keep failed runs this many days instead (0 or less than retention_days: as long)",
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
) -> tuple[SupervisorSettings, dict[str, str], dict[str, str]]:
    """Merge default, file (``table``), environment and flags, in rising precedence.

    ``where`` prefixes file errors (``"supervisor.toml: "``). An empty environment variable
    counts as unset, and so does a ``None`` override. Returns the settings and, for each,
    where its value came from: the kind (``default``, ``file``, ``environment`` or ``flag``)
    and the label naming it (``default``, ``supervisor.toml: supervisor.workers``,
    ``ACTOR_SUPERVISOR_WORKERS``, ``--workers``), so ``config show`` and ``status`` can say
    which one won without guessing.
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
    return settings, sources, labels


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
