"""The message types, one frozen dataclass each.

Wire format: one ZeroMQ frame holding an orjson object ``{"v": 1, "type": "<type>", ...fields}``.
Worker sockets are DEALERs talking to the supervisor's worker ROUTER; client sockets are DEALERs
talking to the control ROUTER. Every client request carries an ``id`` that its replies echo.

Worker -> supervisor: ``hello``, ``result``.  Supervisor -> worker: ``run``, ``stop``,
``cancel_run``.
Client -> supervisor: ``submit``, ``trigger``, ``pause``, ``resume``, ``status``, ``refresh``,
``rerun``, ``cancel``.
Supervisor -> client: ``reply`` (``ok`` with a ``kind`` and ``data``, or an ``error``).

The dataclasses carry ``v`` and ``type`` as fields so that ``orjson.dumps`` serializes a message
directly, without an intermediate dict.
"""

from dataclasses import dataclass, field
from typing import Any, ClassVar

from protocol.errors import ProtocolError
from protocol.fields import MAX_TEXT, FieldReader
from protocol.outcomes import FINAL_STATUSES, Reason

PROTOCOL_VERSION = 1
MODES = frozenset({"fork", "exec"})
NETWORKS = frozenset({"host", "none"})  # none: a fresh network namespace with only loopback
STATUSES = frozenset(s.value for s in FINAL_STATUSES)  # what a worker may report
REASONS = frozenset(r.value for r in Reason)
MAX_INPUT_CHARS = 8 << 20
# output_kb and stderr_kb at most, so that a result carrying both (re-encoded as JSON, which can
# grow escaped bytes) and an error text (MAX_TEXT) still fits MAX_BODY_BYTES (32 MiB).
LIMIT_CAPS = {"output_kb": 8192, "stderr_kb": 1024}


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Resource limits of one run; ``None`` leaves the limit unset (inherited)."""

    cpu_s: int | None = None
    memory_mb: int | None = 1024
    nofile: int | None = 256
    nproc: int | None = 128
    fsize_mb: int | None = 100
    tmp_mb: int | None = 64  # the run's private /tmp, /var/tmp and /dev/shm (root only)
    output_kb: int = 1024
    stderr_kb: int = 8

    NAMES: ClassVar[tuple[str, ...]] = (
        "cpu_s", "memory_mb", "nofile", "nproc", "fsize_mb", "tmp_mb", "output_kb", "stderr_kb",
    )  # fmt: skip

    @classmethod
    def read(cls, r: FieldReader) -> "Limits":
        return cls(
            cpu_s=r.opt_integer("cpu_s", minimum=1),
            memory_mb=r.opt_integer("memory_mb", minimum=16),
            nofile=r.opt_integer("nofile", minimum=8),
            nproc=r.opt_integer("nproc", minimum=1),
            fsize_mb=r.opt_integer("fsize_mb", minimum=0),
            tmp_mb=r.opt_integer("tmp_mb", minimum=1),
            output_kb=r.integer("output_kb", minimum=1, maximum=LIMIT_CAPS["output_kb"]),
            stderr_kb=r.integer("stderr_kb", minimum=0, maximum=LIMIT_CAPS["stderr_kb"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Rusage:
    """Resources the run's process used, from ``os.wait4``."""

    utime_s: float = 0.0
    stime_s: float = 0.0
    maxrss_kb: int = 0

    @classmethod
    def read(cls, r: FieldReader) -> "Rusage":
        return cls(
            utime_s=r.number("utime_s", minimum=0),
            stime_s=r.number("stime_s", minimum=0),
            maxrss_kb=r.integer("maxrss_kb", minimum=0),
        )


# --- worker <-> supervisor -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """A worker announces itself once its launcher is up and it can take runs."""

    v: int = field(default=PROTOCOL_VERSION, init=False)
    type: str = field(default="hello", init=False)
    worker_id: str
    pid: int
    launcher_pid: int
    capacity: int

    @classmethod
    def read(cls, r: FieldReader) -> "Hello":
        return cls(
            worker_id=r.string("worker_id", max_len=64),
            pid=r.integer("pid", minimum=1),
            launcher_pid=r.integer("launcher_pid", minimum=1),
            capacity=r.integer("capacity", minimum=1),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """Run one attempt of an actor's script.

    ``script`` is the file to execute, ``cwd`` the folder that acts as its home: the working
    directory and the first entry of ``sys.path`` (they differ when the code is materialized from
    the database). ``input_json`` is the exact text fed to the script's stdin. ``modules``: the
    files of the stored code bundle beside ``script`` (relative paths), imported from what the
    child read before it dropped its privileges. ``argv`` non-empty: ``script`` is a program,
    exec'd with these arguments (``argv[0]`` first) instead of run as Python. ``stored``:
    ``script`` and ``modules`` are the supervisor's materialized copy of stored code, private to
    it, so the child reads them before it drops its privileges; any other script is read as the
    run's user, who must be allowed to.
    """

    v: int = field(default=PROTOCOL_VERSION, init=False)
    type: str = field(default="run", init=False)
    run_id: str
    attempt: int
    actor: str
    script: str
    cwd: str
    mode: str
    input_json: str
    env: dict[str, str]
    limits: Limits
    timeout_s: float
    code_sha256: str
    network: str = "host"
    modules: tuple[str, ...] = ()
    argv: tuple[str, ...] = ()
    stored: bool = False
    # A file-mode script that is its whole bundle: its SHA256 as the supervisor read it, which
    # the run's child compares with what it runs ("": no check; see Result.code_sha256).
    script_sha256: str = ""

    @classmethod
    def read(cls, r: FieldReader) -> "Run":
        return cls(
            run_id=r.string("run_id", max_len=64),
            attempt=r.integer("attempt", minimum=1),
            actor=r.string("actor", max_len=200),
            script=r.string("script"),
            cwd=r.string("cwd"),
            mode=r.choice("mode", MODES),
            input_json=r.string("input_json", max_len=MAX_INPUT_CHARS),
            env=r.str_map("env"),
            limits=Limits.read(r.sub("limits")),
            timeout_s=r.number("timeout_s", minimum=0.001),
            code_sha256=r.string("code_sha256", max_len=64, empty=True),
            network=r.choice("network", NETWORKS),
            modules=r.str_list("modules"),
            argv=r.str_list("argv", max_items=4096),
            stored=r.boolean("stored", default=False),
            script_sha256=r.opt_string("script_sha256", max_len=64) or "",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """The classified outcome of one attempt, as the worker saw it."""

    v: int = field(default=PROTOCOL_VERSION, init=False)
    type: str = field(default="result", init=False)
    run_id: str
    attempt: int
    worker_id: str
    status: str
    reason: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    output: Any = None
    stderr_tail: str = ""
    error: str | None = None  # a human-readable detail of the reason
    duration_ms: float = 0.0
    started_at: float = 0.0  # epoch seconds
    finished_at: float = 0.0
    child_pid: int | None = None
    rusage: Rusage = field(default_factory=Rusage)
    # The SHA256 of the script the run executed, when it is not the Run's script_sha256 (the
    # file changed between the supervisor's read and the run's): what the row records.
    code_sha256: str | None = None

    @classmethod
    def read(cls, r: FieldReader) -> "Result":
        reason = r.opt_string("reason")
        if reason is not None and reason not in REASONS:
            raise ProtocolError(f"result.reason: unknown value {reason!r}")
        return cls(
            run_id=r.string("run_id", max_len=64),
            attempt=r.integer("attempt", minimum=1),
            worker_id=r.string("worker_id", max_len=64),
            status=r.choice("status", STATUSES),
            reason=reason,
            exit_code=r.opt_integer("exit_code"),
            signal=r.opt_integer("signal", minimum=1),
            output=r.any("output"),
            stderr_tail=r.string("stderr_tail", max_len=MAX_TEXT, empty=True),
            error=r.opt_string("error", max_len=MAX_TEXT),
            duration_ms=r.number("duration_ms", minimum=0),
            started_at=r.number("started_at", minimum=0),
            finished_at=r.number("finished_at", minimum=0),
            child_pid=r.opt_integer("child_pid", minimum=1),
            rusage=Rusage.read(r.sub("rusage")),
            code_sha256=r.opt_string("code_sha256", max_len=64),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Stop:
    """Stop taking runs and exit once idle; with ``kill``, kill the runs in flight first."""

    v: int = field(default=PROTOCOL_VERSION, init=False)
    type: str = field(default="stop", init=False)
    kill: bool = False

    @classmethod
    def read(cls, r: FieldReader) -> "Stop":
        return cls(kill=r.boolean("kill", default=False))


# --- client <-> supervisor -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Submit:
    """Queue one run of an actor. With ``wait`` a second reply carries the final result."""

    v: int = field(default=PROTOCOL_VERSION, init=False)
    type: str = field(default="submit", init=False)
    id: str
    actor: str
    input: Any = None
    wait: bool = False
    idempotency_key: str | None = None

    @classmethod
    def read(cls, r: FieldReader) -> "Submit":
        return cls(
            id=r.string("id", max_len=64),
            actor=r.string("actor", max_len=200),
            input=r.any("input"),
            wait=r.boolean("wait", default=False),
            idempotency_key=_idempotency_key(r),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Trigger:
    """Run an actor now, outside its schedule (with its configured input unless one is given)."""

    v: int = field(default=PROTOCOL_VERSION, init=False)
    type: str = field(default="trigger", init=False)
    id: str
    actor: str
    input: Any = None
    force: bool = False

    @classmethod
    def read(cls, r: FieldReader) -> "Trigger":
        return cls(
            id=r.string("id", max_len=64),
            actor=r.string("actor", max_len=200),
            input=r.any("input"),
            force=r.boolean("force", default=False),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Pause:
    """Pause an actor: no new scheduled runs start until it is resumed."""

    v: int = field(default=PROTOCOL_VERSION, init=False)
    type: str = field(default="pause", init=False)
    id: str
    actor: str
    reason: str | None = None

    @classmethod
    def read(cls, r: FieldReader) -> "Pause":
        return cls(
            id=r.string("id", max_len=64),
            actor=r.string("actor", max_len=200),
            reason=r.opt_string("reason", max_len=1000),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume:
    """Resume a paused actor and reset its consecutive-failure count."""

    v: int = field(default=PROTOCOL_VERSION, init=False)
    type: str = field(default="resume", init=False)
    id: str
    actor: str

    @classmethod
    def read(cls, r: FieldReader) -> "Resume":
        return cls(id=r.string("id", max_len=64), actor=r.string("actor", max_len=200))


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRequest:
    """Ask for the scoreboard, the schedule and the store's health."""

    v: int = field(default=PROTOCOL_VERSION, init=False)
    type: str = field(default="status", init=False)
    id: str

    @classmethod
    def read(cls, r: FieldReader) -> "StatusRequest":
        return cls(id=r.string("id", max_len=64))


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsRequest:
    """Ask for the counters and histograms behind ``/metrics`` (see ``supervisor.metrics``)."""

    v: int = field(default=PROTOCOL_VERSION, init=False)
    type: str = field(default="metrics", init=False)
    id: str

    @classmethod
    def read(cls, r: FieldReader) -> "MetricsRequest":
        return cls(id=r.string("id", max_len=64))


@dataclass(frozen=True, slots=True, kw_only=True)
class Refresh:
    """Re-read an actor's code from the store (after a CLI deploy or rollback committed).

    Answered ``ok`` once the supervisor uses the actor's active version: ``data`` holds its
    ``history_id``, ``code_sha256`` and sync ``status``.
    """

    v: int = field(default=PROTOCOL_VERSION, init=False)
    type: str = field(default="refresh", init=False)
    id: str
    actor: str

    @classmethod
    def read(cls, r: FieldReader) -> "Refresh":
        return cls(id=r.string("id", max_len=64), actor=r.string("actor", max_len=200))


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRun:
    """Kill one attempt in flight (its whole process group); its result says ``cancelled``.
    An attempt the worker no longer holds is ignored: its result is already on the way."""

    v: int = field(default=PROTOCOL_VERSION, init=False)
    type: str = field(default="cancel_run", init=False)
    run_id: str
    attempt: int

    @classmethod
    def read(cls, r: FieldReader) -> "CancelRun":
        return cls(run_id=r.string("run_id", max_len=64), attempt=r.integer("attempt", minimum=1))


@dataclass(frozen=True, slots=True, kw_only=True)
class Rerun:
    """Queue a new run of a recorded run's actor with the same input, linked to it. Answered
    like ``submit``: ``accepted``, then with ``wait`` the ``result``."""

    v: int = field(default=PROTOCOL_VERSION, init=False)
    type: str = field(default="rerun", init=False)
    id: str
    run_id: str  # the whole id: clients resolve a prefix in the store first
    wait: bool = False

    @classmethod
    def read(cls, r: FieldReader) -> "Rerun":
        return cls(
            id=r.string("id", max_len=64),
            run_id=r.string("run_id", max_len=64),
            wait=r.boolean("wait", default=False),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel:
    """Cancel a run: a queued (or retry-waiting) one never starts, a running one is killed.
    Answered ``cancelling`` (the run was not final), then ``result`` with its one outcome;
    a run that is not in flight is refused (``not_cancellable``)."""

    v: int = field(default=PROTOCOL_VERSION, init=False)
    type: str = field(default="cancel", init=False)
    id: str
    run_id: str

    @classmethod
    def read(cls, r: FieldReader) -> "Cancel":
        return cls(id=r.string("id", max_len=64), run_id=r.string("run_id", max_len=64))


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadRequest:
    """Reload the configuration file, as SIGHUP does; answered ``ok`` with what changed
    (``added``, ``removed``, ``changed`` actors, ``restart_needed`` settings), or the error
    ``config_rejected`` naming the problem (the running configuration stays)."""

    v: int = field(default=PROTOCOL_VERSION, init=False)
    type: str = field(default="reload", init=False)
    id: str

    @classmethod
    def read(cls, r: FieldReader) -> "ReloadRequest":
        return cls(id=r.string("id", max_len=64))


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowRequest:
    """Workflows: ``run`` a workflow over ``items`` (answered ``accepted`` once the workflow run
    and its items are committed), ``resume`` or ``cancel`` a workflow run, or ``list`` them."""

    v: int = field(default=PROTOCOL_VERSION, init=False)
    type: str = field(default="workflow", init=False)
    id: str
    action: str
    name: str | None = None  # run: the workflow
    workflow_run_id: str | None = None  # resume, cancel
    items: Any = None  # run: a list of JSON values

    ACTIONS: ClassVar[frozenset[str]] = frozenset({"run", "resume", "cancel", "list"})

    @classmethod
    def read(cls, r: FieldReader) -> "WorkflowRequest":
        message = cls(
            id=r.string("id", max_len=64),
            action=r.choice("action", cls.ACTIONS),
            name=r.opt_string("name", max_len=200),
            workflow_run_id=r.opt_string("workflow_run_id", max_len=64),
            items=r.any("items"),
        )
        if message.action == "run" and (message.name is None or message.items is None):
            raise ProtocolError("workflow run needs name and items")
        if message.action in ("resume", "cancel") and message.workflow_run_id is None:
            raise ProtocolError(f"workflow {message.action} needs workflow_run_id")
        return message


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """The answer to a client request: ``ok`` with ``kind``/``data``, or an error ``code``."""

    v: int = field(default=PROTOCOL_VERSION, init=False)
    type: str = field(default="reply", init=False)
    id: str
    ok: bool
    kind: str
    data: Any = None
    error: str | None = None  # a stable code: bad_request, unknown_actor, busy, paused, ...
    message: str | None = None

    @classmethod
    def read(cls, r: FieldReader) -> "Reply":
        return cls(
            id=r.string("id", max_len=64, empty=True),
            ok=r.boolean("ok"),
            kind=r.string("kind", max_len=64),
            data=r.any("data"),
            error=r.opt_string("error", max_len=64),
            message=r.opt_string("message", max_len=MAX_TEXT),
        )


Message = (
    Hello
    | Run
    | Result
    | Stop
    | Submit
    | Trigger
    | Pause
    | Resume
    | StatusRequest
    | MetricsRequest
    | Refresh
    | CancelRun
    | Rerun
    | Cancel
    | ReloadRequest
    | WorkflowRequest
    | Reply
)

MESSAGE_TYPES: dict[str, Any] = {
    "hello": Hello,
    "run": Run,
    "result": Result,
    "stop": Stop,
    "submit": Submit,
    "trigger": Trigger,
    "pause": Pause,
    "resume": Resume,
    "status": StatusRequest,
    "metrics": MetricsRequest,
    "refresh": Refresh,
    "cancel_run": CancelRun,
    "rerun": Rerun,
    "cancel": Cancel,
    "reload": ReloadRequest,
    "workflow": WorkflowRequest,
    "reply": Reply,
}
WORKER_TO_SUPERVISOR = frozenset({"hello", "result"})
SUPERVISOR_TO_WORKER = frozenset({"run", "stop", "cancel_run"})
CLIENT_REQUESTS = frozenset(
    {
        "submit",
        "trigger",
        "pause",
        "resume",
        "status",
        "metrics",
        "refresh",
        "rerun",
        "cancel",
        "reload",
        "workflow",
    }
)


def _idempotency_key(r: FieldReader) -> str | None:
    """A NUL cannot be stored (the stores replace it), so a key holding one would deduplicate
    until a restart and not after: refused."""
    key = r.opt_string("idempotency_key", max_len=200)
    if key is not None and "\x00" in key:
        raise ProtocolError("idempotency_key must not contain NUL characters")
    return key
