"""How a run ended: the status that drives retries, the reason an operator reads, and the
outcome a client receives. Supervisor, workers and client all use these three definitions.

The classification is data, not an exception: a script's failure is an ordinary outcome.
"""

import operator
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from protocol.errors import ProtocolError


class RunStatus(StrEnum):
    """Lifecycle of one attempt: the first two are "in flight", the others final.
    Only ``failed_retryable`` is ever retried; ``cancelled`` is an operator's doing."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED_RETRYABLE = "failed_retryable"
    FAILED_PERMANENT = "failed_permanent"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset(
    {
        RunStatus.SUCCEEDED,
        RunStatus.FAILED_RETRYABLE,
        RunStatus.FAILED_PERMANENT,
        RunStatus.CANCELLED,
    }
)


class Reason(StrEnum):
    """Why an attempt failed (a succeeded attempt has no reason)."""

    EXIT_CODE = "exit_code"  # non-zero exit; 75 (EX_TEMPFAIL) or {"retryable": true} is retryable
    TIMEOUT = "timeout"  # wall-clock timeout_s passed; the process group was killed
    MEMORY_LIMIT = "memory_limit"  # the address-space limit (memory_mb) was hit
    CPU_LIMIT = "cpu_limit"  # the CPU-seconds limit (cpu_s) was hit
    FILE_SIZE_LIMIT = "file_size_limit"  # the file-size limit (fsize_mb) was hit
    SIGNAL = "signal"  # killed by a signal nobody in the supervisor sent
    INVALID_OUTPUT = "invalid_output"  # stdout was not exactly one JSON document
    OUTPUT_LIMIT = "output_limit"  # stdout grew past output_kb; the process group was killed
    SANDBOX_ERROR = "sandbox_error"  # the sandbox could not be set up (chdir, setuid, exec, ...)
    FILE_MISSING = "file_missing"  # the script file does not exist
    WORKER_LOST = "worker_lost"  # the worker holding the run died
    SUPERVISOR_LOST = "supervisor_lost"  # the supervisor died while the run was in flight
    SHUTDOWN = "shutdown"  # killed because the supervisor stopped and the grace period ran out
    POISON = "poison"  # its attempts killed their worker twice: never retried again
    UNKNOWN_ACTOR = (
        "unknown_actor"  # recovered after a restart, but the actor is no longer configured
    )
    CANCELLED = "cancelled"  # an operator cancelled it: queued, it never started; running, killed


EX_TEMPFAIL = 75

RETRYABLE_REASONS = frozenset(
    {Reason.TIMEOUT, Reason.WORKER_LOST, Reason.SUPERVISOR_LOST, Reason.SHUTDOWN}
)

# Reasons a worker's own kill stands for (the worker classifies the run it killed with them).


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOutcome:
    """The final outcome of a run (after its retries): the last attempt's fields.

    The supervisor builds it from the attempt's row (:func:`supervisor.runs.outcome_of`) and
    sends :meth:`as_dict`; the client reads it back with :meth:`from_dict`, which refuses a
    field it does not know rather than drop it.
    """

    run_id: str
    actor: str
    status: str
    reason: str | None = None
    error: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    output: Any = None
    stderr_tail: str = ""
    duration_ms: float | None = None
    code_sha256: str = ""
    code_history_id: str | None = None  # the code version that ran (actor_code_history)
    code_source: str | None = None  # "file" or "database"
    attempt: int = 1
    attempts: int = 1
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == RunStatus.SUCCEEDED

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(_OUTCOME_NAMES, _outcome_values(self), strict=True))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunOutcome":
        """:raises ProtocolError: a field is unknown or a required one is missing."""
        unknown = sorted(set(data) - OUTCOME_FIELDS)
        if unknown:
            raise ProtocolError(f"result: unknown field(s) {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:  # a required field is missing
            raise ProtocolError(f"result: {exc}") from exc


_OUTCOME_NAMES = tuple(f.name for f in fields(RunOutcome))  # in order; once, not per outcome
_outcome_values = operator.attrgetter(*_OUTCOME_NAMES)
OUTCOME_FIELDS = frozenset(_OUTCOME_NAMES)
